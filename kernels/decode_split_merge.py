"""Merge the per-split results of flash-decoding by their log-sum-exp.

Split `s` of sequence `i` attended over tokens `[s * partition, ...)` (the last split runs to
the sequence's end) and stored its softmax-normalised output `part_out[i, h, s]` with
`part_lse[i, h, s]`, the log2 of its sum of exp2-scores. Splits that started past the
sequence's length never ran: only the first `ceil(seq_len / partition)` are read. A
sequence of length 0 gets zeros.

gpt-oss: with a sliding `window` the splits cut the span in sight, `min(seq_len, window)`
tokens, so that span decides how many ran. With `sinks` ([num_heads] logits, natural
units), each head's softmax denominator gains `exp(sink)`, a logit with no value:
`out = sum_s 2^lse_s out_s / (sum_s 2^lse_s + e^sink)`.
"""

from __future__ import annotations

import math

import torch

from corral.kernels._triton import jit, next_power_of_2, tl

__all__ = ["merge_decode_splits_torch", "merge_decode_splits_triton"]


def merge_decode_splits_torch(
    part_out: torch.Tensor,  # f32 [num_seqs, num_heads, num_splits, head_dim]
    part_lse: torch.Tensor,  # f32 [num_seqs, num_heads, num_splits]
    seq_lens: torch.Tensor,  # int32 [num_seqs]
    partition: int,
    out: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    sinks: torch.Tensor | None = None,  # [num_heads] sink logits
    window: int | None = None,  # the splits cut the last `window` tokens only
) -> torch.Tensor:
    """Reference merge, written into `out`."""
    num_splits = part_out.shape[2]
    splits = torch.arange(num_splits, device=part_out.device)
    span = seq_lens.long() if window is None else seq_lens.long().clamp(max=window)
    num_valid = torch.clamp((span + partition - 1) // partition, max=num_splits)
    valid = splits[None, :] < num_valid[:, None]  # [num_seqs, num_splits]
    lse = part_lse.masked_fill(~valid[:, None, :], float("-inf"))
    if sinks is not None:  # the sink joins as one more "split" with no output
        sink = (sinks.float() * math.log2(math.e)).view(1, -1, 1).expand(lse.shape[0], -1, 1)
        lse = torch.cat([lse, sink], dim=-1)
    weights = torch.exp2(lse - lse.amax(-1, keepdim=True)).nan_to_num(0.0)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
    weights = weights[..., :num_splits]
    parts = part_out.masked_fill(~valid[:, None, :, None], 0.0)
    out.copy_((parts * weights[..., None]).sum(2))
    return out


@jit(do_not_specialize=("partition", "num_splits"))
def _merge_splits_kernel(
    part_out_ptr,
    part_lse_ptr,
    seq_lens_ptr,
    sinks_ptr,  # [NUM_HEADS] sink logits, read when HAS_SINKS
    window,  # read when HAS_WINDOW
    out_ptr,
    partition,
    num_splits,
    stride_os,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
):
    # One program per (sequence, query head): merges the splits that saw tokens.
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    if HAS_WINDOW:
        seq_len = tl.minimum(seq_len, window)  # the span the splits cut
    num_valid = tl.minimum((seq_len + partition - 1) // partition, num_splits)
    splits = tl.arange(0, SPLITS_PAD)
    split_mask = splits < num_valid
    row = seq.to(tl.int64) * NUM_HEADS + head
    lse = tl.load(part_lse_ptr + row * num_splits + splits, mask=split_mask, other=float("-inf"))
    lse_max = tl.where(num_valid > 0, tl.max(lse, 0), 0.0)  # finite even with no split
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634  # log2 units
        lse_max = tl.where(num_valid > 0, tl.maximum(lse_max, sink), sink)
    weights = tl.where(split_mask, tl.exp2(lse - lse_max), 0.0)  # [SPLITS_PAD]
    total = tl.sum(weights, 0)
    if HAS_SINKS:
        total += tl.exp2(sink - lse_max)  # > 0: the sink's own mass
    weights = weights / tl.where(total > 0.0, total, 1.0)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    parts = tl.load(
        part_out_ptr + (row * num_splits + splits[:, None]) * HEAD_DIM + dims[None, :],
        mask=split_mask[:, None] & dim_mask[None, :],
        other=0.0,
    )  # [SPLITS_PAD, BLOCK_D]
    result = tl.sum(parts * weights[:, None], 0)
    tl.store(
        out_ptr + seq * stride_os + head * stride_oh + dims,
        result.to(out_ptr.dtype.element_ty),
        mask=dim_mask,
    )


def merge_decode_splits_triton(
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    seq_lens: torch.Tensor,
    partition: int,
    out: torch.Tensor,
    sinks: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Triton merge, one program per (sequence, head); capture-safe."""
    num_seqs, num_heads, num_splits, head_dim = part_out.shape
    if num_seqs == 0:
        return out
    _merge_splits_kernel[(num_seqs, num_heads)](
        part_out,
        part_lse,
        seq_lens,
        sinks if sinks is not None else part_lse,
        window if window is not None else 0,
        out,
        partition,
        num_splits,
        out.stride(0),
        out.stride(1),
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        BLOCK_D=next_power_of_2(head_dim),
        SPLITS_PAD=next_power_of_2(num_splits),
        HAS_SINKS=sinks is not None,
        HAS_WINDOW=window is not None,
        num_warps=1 if head_dim <= 64 else 2,
    )
    return out
