"""Apply a packed allowed-token bitmask to logits, in place.

`logits`: float `[batch, vocab]`; `bitmask`: int32 `[num_rows, ceil(vocab/32)]`, bit `j` of
word `i` set = token `32*i + j` allowed; `rows`: int64 `[num_rows]`, the logits row each
bitmask row applies to (None = row `r` applies to logits row `r`). Disallowed tokens get
-inf. Tokens past the mask's width are disallowed.
"""

from __future__ import annotations

import torch


def apply_token_bitmask_torch(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None
) -> None:
    """Pure-torch reference: one batched masked fill."""
    vocab = logits.shape[-1]
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).bool()  # [num_rows, words, 32]
    allowed = allowed.reshape(bitmask.shape[0], -1)
    if allowed.shape[1] < vocab:
        pad = torch.zeros(
            (allowed.shape[0], vocab - allowed.shape[1]), dtype=torch.bool, device=allowed.device
        )
        allowed = torch.cat([allowed, pad], dim=1)
    allowed = allowed[:, :vocab].to(logits.device)
    if rows is None:
        logits.masked_fill_(~allowed, float("-inf"))
    else:
        rows = rows.to(logits.device)
        logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))


def apply_token_bitmask_(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None
) -> None:
    """Apply `bitmask` to `logits` in place, with the fastest kernel for the device."""
    apply_token_bitmask_torch(logits, bitmask, rows)
