"""Paged decode attention: one query token per sequence over its block table.

The Triton kernel is flash-decoding over the paged cache. A program owns one (sequence,
KV head, split): it loads the query rows of the KV head's whole GQA group at once (the KV
tile is read once for all of them, never repeated in memory) and runs an online softmax over
its split of the context. With several splits, a second kernel merges the partial results
by their log-sum-exp (`decode_split_merge`). The grid depends only on python ints (batch
size, `max_seq_len`), so the launch is CUDA-graph capture-safe; the last split always runs
to the sequence's end, so a replay with longer contexts than the captured `max_seq_len`
stays correct.

gpt-oss options, both compiled away when unused (`HAS_SINKS`, `HAS_WINDOW` constexprs):
- `window`: the query (position `seq_len - 1`) sees its last `window` keys only. Splits cut
  that span, `[max(seq_len - window, 0), seq_len)`, not the whole context, so no program
  idles on keys out of sight and the grid is sized by `min(max_seq_len, window)`.
- `sinks` ([num_heads] logits): one extra logit with no value in each head's softmax
  denominator. It is added once, where the result is normalised: in the split kernel when
  there is one split, else in the merge (`decode_split_merge`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from corral.kernels._triton import (
    cdiv,
    dot_dtype,
    dot_precision,
    jit,
    next_power_of_2,
    num_sms,
    tl,
    use_triton,
)
from corral.kernels.decode_split_merge import merge_decode_splits_triton
from corral.kernels.paged_kv_reference import gather_context

__all__ = [
    "paged_decode_attention",
    "paged_decode_attention_torch",
    "paged_decode_attention_triton",
]

# Tile and launch settings for the split kernel; benchmarks may override them.
DECODE_CONFIG = {
    "block_n": 64,
    "num_warps": 4,
    "num_stages": 3,
    "min_partition": 64,  # fewest tokens per split
    "programs_per_sm": 2,  # split until the grid has about this many programs per SM
}


def paged_decode_attention_torch(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # int32 [num_seqs, max_blocks]
    seq_lens: torch.Tensor,  # int32 [num_seqs]
    max_seq_len: int,
    scale: float,
    out: torch.Tensor | None = None,  # [num_seqs, num_heads, head_dim]
) -> torch.Tensor:
    """Reference: gather each sequence's context, attend with a length mask (SDPA)."""
    if out is None:
        out = torch.empty_like(query)
    if query.shape[0] == 0:
        return out
    block_size = k_cache.shape[1]
    num_blocks = cdiv(max(max_seq_len, 1), block_size)
    keys = gather_context(k_cache, block_tables, num_blocks).transpose(1, 2)  # [B, Hkv, L, D]
    values = gather_context(v_cache, block_tables, num_blocks).transpose(1, 2)
    positions = torch.arange(keys.shape[2], device=query.device)
    mask = positions[None, :] < seq_lens[:, None].to(positions.device)  # [B, L]
    q = query.unsqueeze(2)  # [B, Hq, 1, D]
    res = F.scaled_dot_product_attention(
        q,
        keys.to(q.dtype),
        values.to(q.dtype),
        attn_mask=mask[:, None, None, :],
        scale=scale,
        enable_gqa=keys.shape[1] != q.shape[1],
    )
    out.copy_(res.squeeze(2))
    return out


@jit(do_not_specialize=("partition", "num_splits", "stride_bt"))
def _decode_split_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    sinks_ptr,  # f32-castable [num_heads], read when HAS_SINKS and SINGLE_SPLIT
    window,  # keys the query sees, read when HAS_WINDOW
    out_ptr,  # [num_seqs, num_heads, head_dim], written when SINGLE_SPLIT
    part_out_ptr,  # f32 [num_seqs, num_heads, num_splits, HEAD_DIM], normalised
    part_lse_ptr,  # f32 [num_seqs, num_heads, num_splits], log2-sum-exp2 per split
    scale_log2,  # softmax scale * log2(e)
    partition,  # tokens per split, a multiple of BLOCK_N
    num_splits,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    stride_os,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    if HAS_WINDOW:
        first = tl.maximum(seq_len - window, 0)  # first key in sight
    else:
        first = 0
    start = first + split * partition
    if not SINGLE_SPLIT:
        if start >= seq_len:
            return
    end = tl.where(split == num_splits - 1, seq_len, tl.minimum(start + partition, seq_len))

    groups = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + groups  # [GROUP_PAD]
    head_mask = groups < GROUP
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    q = tl.load(
        q_ptr + seq * stride_qs + heads[:, None] * stride_qh + dims[None, :],
        mask=head_mask[:, None] & dim_mask[None, :],
        other=0.0,
    ).to(DOT_DTYPE)  # [GROUP_PAD, BLOCK_D]

    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], dtype=tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for n0 in range(start, end, BLOCK_N):
        tokens = n0 + tl.arange(0, BLOCK_N)
        token_mask = tokens < end
        blocks = tl.load(table + tokens // BLOCK_SIZE, mask=token_mask, other=0).to(tl.int64)
        offsets = tokens % BLOCK_SIZE
        kv_mask = token_mask[:, None] & dim_mask[None, :]
        k = tl.load(
            k_cache_ptr
            + blocks[:, None] * stride_kb
            + offsets[:, None] * stride_ks
            + kv_head * stride_kh
            + dims[None, :],
            mask=kv_mask,
            other=0.0,
        )  # [BLOCK_N, BLOCK_D]
        s = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * scale_log2
        s = tl.where(token_mask[None, :], s, float("-inf"))  # [GROUP_PAD, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_cache_ptr
            + blocks[:, None] * stride_vb
            + offsets[:, None] * stride_vs
            + kv_head * stride_vh
            + dims[None, :],
            mask=kv_mask,
            other=0.0,
        )
        acc = tl.dot(
            p.to(DOT_DTYPE), v.to(DOT_DTYPE), acc * alpha[:, None], input_precision=DOT_PRECISION
        )
        m_i = m_new

    safe_l = tl.where(l_i > 0.0, l_i, 1.0)
    store_mask = head_mask[:, None] & dim_mask[None, :]
    if SINGLE_SPLIT and HAS_SINKS:
        # log2 units, like m_i: the denominator gains exp(sink) = exp2(sink * log2(e)).
        sink = tl.load(sinks_ptr + heads, mask=head_mask, other=0.0).to(tl.float32)
        sink = sink * 1.4426950408889634
        m_all = tl.maximum(m_i, sink)  # finite: the sink is
        denom = l_i * tl.exp2(m_i - m_all) + tl.exp2(sink - m_all)
        result = acc * (tl.exp2(m_i - m_all) / denom)[:, None]
    else:
        result = acc / safe_l[:, None]
    if SINGLE_SPLIT:
        tl.store(
            out_ptr + seq * stride_os + heads[:, None] * stride_oh + dims[None, :],
            result.to(out_ptr.dtype.element_ty),
            mask=store_mask,
        )
    else:
        row = seq.to(tl.int64) * NUM_HEADS + heads  # [GROUP_PAD]
        tl.store(
            part_out_ptr + (row[:, None] * num_splits + split) * HEAD_DIM + dims[None, :],
            result,
            mask=store_mask,
        )
        tl.store(part_lse_ptr + row * num_splits + split, m_i + tl.log2(safe_l), mask=head_mask)


def decode_partition(
    num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device
) -> tuple[int, int]:
    """(partition length, number of splits) for a decode launch; python ints only.

    Splits the context only as far as needed to give each multiprocessor about
    `programs_per_sm` programs, and never below `min_partition` tokens per split.
    With a sliding window, `max_seq_len` is the longest span in sight: at most the window.
    """
    block_n = DECODE_CONFIG["block_n"]
    max_seq_len = max(max_seq_len, 1)
    max_splits = cdiv(max_seq_len, DECODE_CONFIG["min_partition"])
    num_programs = DECODE_CONFIG["programs_per_sm"] * num_sms(device)
    wanted = cdiv(num_programs, max(num_seqs * num_kv_heads, 1))
    splits = max(1, min(wanted, max_splits))
    partition = cdiv(cdiv(max_seq_len, splits), block_n) * block_n
    return partition, cdiv(max_seq_len, partition)


def paged_decode_attention_triton(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # int32 [num_seqs, max_blocks]
    seq_lens: torch.Tensor,  # int32 [num_seqs]
    max_seq_len: int,
    scale: float,
    out: torch.Tensor | None = None,  # [num_seqs, num_heads, head_dim]
    num_splits: int | None = None,
    sinks: torch.Tensor | None = None,  # [num_heads] sink logits (gpt-oss)
    window: int | None = None,  # keys each query sees, itself included (sliding window)
) -> torch.Tensor:
    """Triton flash-decoding over the paged cache; no host sync, capture-safe.

    `max_seq_len` (a python int, an upper bound of `seq_lens`) sizes the split grid;
    `num_splits` forces a split count (tests), otherwise `decode_partition` picks it.
    `sinks` and `window` are gpt-oss's attention sinks and sliding window (module doc).
    """
    if out is None:
        out = torch.empty_like(query)
    num_seqs, num_heads, head_dim = query.shape
    if num_seqs == 0:
        return out
    _, block_size, num_kv_heads, _ = k_cache.shape
    for t in (query, k_cache, v_cache, out):
        if t.stride(-1) != 1:
            raise ValueError("paged_decode_attention_triton needs a unit stride on head_dim")
    group = num_heads // num_kv_heads
    if window is not None:
        if window < 1:
            raise ValueError(f"a sliding window needs at least one key, got {window}")
        max_seq_len = min(max_seq_len, window)  # the longest span any query sees
    if num_splits is None:
        partition, num_splits = decode_partition(num_seqs, num_kv_heads, max_seq_len, query.device)
    else:
        block_n = DECODE_CONFIG["block_n"]
        partition = cdiv(cdiv(max(max_seq_len, 1), num_splits), block_n) * block_n
    if num_splits > 1:
        part_out = torch.empty(
            (num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32, device=query.device
        )
        part_lse = torch.empty(
            (num_seqs, num_heads, num_splits), dtype=torch.float32, device=query.device
        )
    else:
        part_out = part_lse = out
    block_d = next_power_of_2(head_dim)
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        query,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        sinks if sinks is not None else out,
        window if window is not None else 0,
        out,
        part_out,
        part_lse,
        scale * math.log2(math.e),
        partition,
        num_splits,
        query.stride(0),
        query.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        NUM_HEADS=num_heads,
        GROUP=group,
        GROUP_PAD=max(16, next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_SIZE=block_size,
        BLOCK_N=DECODE_CONFIG["block_n"],
        SINGLE_SPLIT=num_splits == 1,
        HAS_SINKS=sinks is not None,
        HAS_WINDOW=window is not None,
        DOT_DTYPE=dot_dtype(query.dtype),
        DOT_PRECISION=dot_precision(query.dtype),
        num_warps=DECODE_CONFIG["num_warps"],
        num_stages=DECODE_CONFIG["num_stages"],
    )
    if num_splits > 1:
        merge_decode_splits_triton(part_out, part_lse, seq_lens, partition, out,
                                   sinks=sinks, window=window)
    return out


def paged_decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode attention with the fastest kernel for the device."""
    fn = paged_decode_attention_triton if use_triton(query) else paged_decode_attention_torch
    return fn(query, k_cache, v_cache, block_tables, seq_lens, max_seq_len, scale, out)
