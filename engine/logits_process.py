"""The logits-processor hook: per-sequence processors the sampler calls through one interface.

Two kinds of processor exist:

* A `MaskProcessor` (a grammar matcher is one) says which tokens are allowed next by
  filling one row of a packed int32 bitmask `[batch, ceil(vocab/32)]` (bit `j` of word `i`
  set = token `32*i + j` allowed). The sampler fills the rows of every masked sequence into
  one preallocated buffer and applies them all with one batched op. It is told each sampled
  token through `accept_token`.
* A plain callable `fn(output_token_ids, logits_row) -> logits_row` (the form vLLM and
  transformers users know), applied to its own row; `logits_row` is a 1-D float tensor.

Sequences without processors pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

LogitsFn = Callable[[Sequence[int], torch.Tensor], torch.Tensor]


@runtime_checkable
class MaskProcessor(Protocol):
    """A processor that allows a set of tokens per step (e.g. a grammar matcher)."""

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed-token bits of the next step into `bitmask[row]`."""

    def accept_token(self, token_id: int) -> bool:
        """Advance past a sampled token; False if the token was not allowed."""

    def is_terminated(self) -> bool:
        """True once nothing but the end may follow."""


def bitmask_width(vocab_size: int) -> int:
    """Number of int32 words that hold one bit per token."""
    return (vocab_size + 31) // 32


def allocate_bitmask(num_rows: int, vocab_size: int) -> torch.Tensor:
    """A zeroed packed bitmask `[num_rows, ceil(vocab/32)]` (int32, pinned-free CPU)."""
    return torch.zeros((num_rows, bitmask_width(vocab_size)), dtype=torch.int32)


def bitmask_from_token_ids(token_ids: Sequence[int], vocab_size: int) -> torch.Tensor:
    """A one-row packed bitmask `[ceil(vocab/32)]` allowing exactly `token_ids`."""
    bits = torch.zeros(bitmask_width(vocab_size) * 32, dtype=torch.bool)
    if len(token_ids):
        bits[torch.as_tensor(list(token_ids), dtype=torch.long)] = True
    return pack_bits(bits)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor `[..., 32*k]` into int32 words `[..., k]` (little-endian bits)."""
    shape = bits.shape[:-1] + (bits.shape[-1] // 32, 32)
    weights = torch.tensor([1 << i for i in range(32)], dtype=torch.int64)
    words = (bits.reshape(shape).to(torch.int64) * weights).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_bits(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Unpack int32 words `[..., k]` into bools `[..., vocab_size]` (True = allowed)."""
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1  # [..., k, 32]
    return bits.reshape(*words.shape[:-1], -1)[..., :vocab_size].bool()
