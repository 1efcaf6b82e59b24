"""Paged prefill attention: the query chunks of a varlen batch over their paged contexts.

Sequence `i` has `q_len = query_start_loc[i+1] - query_start_loc[i]` new tokens, the last
`q_len` of its `seq_lens[i]` context tokens (the cache already holds all of them). Query
row `r` sits at position `seq_len - q_len + r` and attends causally to keys `0..position`.
This covers a whole prompt, a chunk of a long prompt after earlier chunks, and a prompt
whose prefix came from the prefix cache alike.

The Triton kernel is flash-attention with an online softmax. A program owns `BLOCK_M`
query rows of one sequence and one head; it reads K/V tiles through the block table. Key
tiles wholly before the tile's first query position need no mask; only the last few tiles,
those crossing the causal diagonal, are masked.

gpt-oss options, compiled away when unused (`HAS_WINDOW`, `HAS_SINKS` constexprs):
- `window`: row `r` at position `p` sees keys `p - window < j <= p`. The key loop starts at
  the tile holding the tile's first row's first key; key tiles that some row of the query
  tile sees only in part (the window's lower edge) run masked, those inside every row's
  window unmasked, then the diagonal as before.
- `sinks` ([num_heads] logits): `exp(sink)` joins each row's softmax denominator, once, where
  the result is normalised.
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
    tl,
    use_triton,
)
from corral.kernels.paged_kv_reference import gather_context

__all__ = [
    "paged_prefill_attention",
    "paged_prefill_attention_torch",
    "paged_prefill_attention_triton",
    "prefill_config",
]


def paged_prefill_attention_torch(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,  # int32 [num_seqs + 1]
    seq_lens: torch.Tensor,  # int32 [num_seqs]
    block_tables: torch.Tensor,  # int32 [num_seqs, max_blocks]
    max_query_len: int,
    scale: float,
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim]
    first_seq: int = 0,
) -> torch.Tensor:
    """Reference: per sequence, gather the context and run causal SDPA with an offset.

    Only the rows of sequences `first_seq..num_seqs-1` are written. Reads the lengths on
    the host (a sync), as a reference may.
    """
    if out is None:
        out = torch.empty_like(query)
    block_size = k_cache.shape[1]
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for i in range(first_seq, len(lens)):
        start, end, seq_len = starts[i], starts[i + 1], lens[i]
        q_len = end - start
        if q_len == 0:
            continue
        num_blocks = cdiv(seq_len, block_size)
        table = block_tables[i : i + 1]
        keys = gather_context(k_cache, table, num_blocks)[0, :seq_len].transpose(0, 1)
        values = gather_context(v_cache, table, num_blocks)[0, :seq_len].transpose(0, 1)
        q = query[start:end].transpose(0, 1)  # [Hq, q_len, D]
        rows = torch.arange(q_len, device=q.device)[:, None] + (seq_len - q_len)
        cols = torch.arange(seq_len, device=q.device)[None, :]
        res = F.scaled_dot_product_attention(
            q.unsqueeze(0),
            keys.unsqueeze(0).to(q.dtype),
            values.unsqueeze(0).to(q.dtype),
            attn_mask=cols <= rows,
            scale=scale,
            enable_gqa=keys.shape[0] != q.shape[0],
        )
        out[start:end] = res[0].transpose(0, 1)
    return out


@jit(do_not_specialize=("first_seq", "num_m_tiles", "stride_bt"))
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    sinks_ptr,  # [num_heads] sink logits, read when HAS_SINKS
    window,  # keys a row sees, itself included; read when HAS_WINDOW
    out_ptr,
    scale_log2,  # softmax scale * log2(e)
    first_seq,
    num_m_tiles,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Heaviest tiles (last rows of the longest chunks) are launched first.
    m_tile = num_m_tiles - 1 - tl.program_id(0)
    seq = first_seq + tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    m0 = m_tile * BLOCK_M
    if m0 >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len  # tokens cached before this chunk

    rows = m0 + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    q_rows = (q_start + rows).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + dims[None, :],
        mask=row_mask[:, None] & dim_mask[None, :],
        other=0.0,
    ).to(DOT_DTYPE)  # [BLOCK_M, BLOCK_D]
    positions = context_len + rows  # [BLOCK_M]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_base = k_cache_ptr + kv_head * stride_kh + dims[None, :]
    v_base = v_cache_ptr + kv_head * stride_vh + dims[None, :]

    # Keys before the tile's first position are visible to every row: no mask needed.
    unmasked_end = ((context_len + m0) // BLOCK_N) * BLOCK_N
    unmasked_start = 0
    if HAS_WINDOW:
        # Window edge: keys [lo, full) are out of sight for some rows. `lo` is where the
        # tile's first row starts seeing; from `full` on every row sees every earlier key.
        last_position = context_len + tl.minimum(m0 + BLOCK_M, q_len) - 1
        lo = (tl.maximum(context_len + m0 - window + 1, 0) // BLOCK_N) * BLOCK_N
        full = tl.cdiv(tl.maximum(last_position - window + 1, 0), BLOCK_N) * BLOCK_N
        unmasked_start = tl.minimum(tl.maximum(full, lo), unmasked_end)
        for n0 in range(lo, unmasked_start, BLOCK_N):
            tokens = n0 + tl.arange(0, BLOCK_N)  # all < unmasked_end <= every position
            blocks = tl.load(table + tokens // BLOCK_SIZE).to(tl.int64)
            slots = blocks * stride_kb + (tokens % BLOCK_SIZE) * stride_ks
            k = tl.load(k_base + slots[:, None], mask=dim_mask[None, :], other=0.0)
            s = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * scale_log2
            s = tl.where(tokens[None, :] > positions[:, None] - window, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v_slots = blocks * stride_vb + (tokens % BLOCK_SIZE) * stride_vs
            v = tl.load(v_base + v_slots[:, None], mask=dim_mask[None, :], other=0.0)
            acc = tl.dot(
                p.to(DOT_DTYPE), v.to(DOT_DTYPE), acc * alpha[:, None],
                input_precision=DOT_PRECISION,
            )
            m_i = m_new
    for n0 in range(unmasked_start, unmasked_end, BLOCK_N):
        tokens = n0 + tl.arange(0, BLOCK_N)
        blocks = tl.load(table + tokens // BLOCK_SIZE).to(tl.int64)
        slots = blocks * stride_kb + (tokens % BLOCK_SIZE) * stride_ks  # [BLOCK_N]
        if BLOCK_D == HEAD_DIM:
            k = tl.load(k_base + slots[:, None])
        else:
            k = tl.load(k_base + slots[:, None], mask=dim_mask[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * scale_log2)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk * scale_log2 - m_new[:, None])  # one FMA per score
        l_i = l_i * alpha + tl.sum(p, 1)
        v_slots = blocks * stride_vb + (tokens % BLOCK_SIZE) * stride_vs
        if BLOCK_D == HEAD_DIM:
            v = tl.load(v_base + v_slots[:, None])
        else:
            v = tl.load(v_base + v_slots[:, None], mask=dim_mask[None, :], other=0.0)
        acc = tl.dot(
            p.to(DOT_DTYPE), v.to(DOT_DTYPE), acc * alpha[:, None], input_precision=DOT_PRECISION
        )
        m_i = m_new

    # Tiles crossing the diagonal: causal and length masks.
    masked_end = tl.minimum(context_len + m0 + BLOCK_M, seq_len)
    for n0 in range(unmasked_end, masked_end, BLOCK_N):
        tokens = n0 + tl.arange(0, BLOCK_N)
        token_mask = tokens < masked_end
        blocks = tl.load(table + tokens // BLOCK_SIZE, mask=token_mask, other=0).to(tl.int64)
        kv_mask = token_mask[:, None] & dim_mask[None, :]
        slots = blocks * stride_kb + (tokens % BLOCK_SIZE) * stride_ks
        k = tl.load(k_base + slots[:, None], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * scale_log2
        visible = (tokens[None, :] <= positions[:, None]) & token_mask[None, :]
        if HAS_WINDOW:
            visible &= tokens[None, :] > positions[:, None] - window
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if HAS_WINDOW:  # a row may have seen no key yet
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:  # every row sees key 0 or earlier keys by now
            m_safe = m_new
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_slots = blocks * stride_vb + (tokens % BLOCK_SIZE) * stride_vs
        v = tl.load(v_base + v_slots[:, None], mask=kv_mask, other=0.0)
        acc = tl.dot(
            p.to(DOT_DTYPE), v.to(DOT_DTYPE), acc * alpha[:, None], input_precision=DOT_PRECISION
        )
        m_i = m_new

    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634  # log2 units
        m_all = tl.maximum(m_i, sink)
        denom = l_i * tl.exp2(m_i - m_all) + tl.exp2(sink - m_all)
        result = acc * (tl.exp2(m_i - m_all) / denom)[:, None]
    else:
        result = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + dims[None, :],
        result.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & dim_mask[None, :],
    )


# Per (dtype itemsize, head_dim bound): BLOCK_M, BLOCK_N, num_warps, num_stages.
PREFILL_CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "half_d64": (128, 128, 4, 3),
    "half_d128": (128, 128, 8, 3),
    "half_d256": (64, 32, 4, 2),
    "float": (64, 32, 4, 2),
}


def prefill_config(dtype: torch.dtype, head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a dtype and head size."""
    if dtype == torch.float32:
        return PREFILL_CONFIGS["float"]
    if head_dim <= 64:
        return PREFILL_CONFIGS["half_d64"]
    if head_dim <= 128:
        return PREFILL_CONFIGS["half_d128"]
    return PREFILL_CONFIGS["half_d256"]


def paged_prefill_attention_triton(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,  # int32 [num_seqs + 1]
    seq_lens: torch.Tensor,  # int32 [num_seqs]
    block_tables: torch.Tensor,  # int32 [num_seqs, max_blocks]
    max_query_len: int,
    scale: float,
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim]
    first_seq: int = 0,
    config: tuple[int, int, int, int] | None = None,
    sinks: torch.Tensor | None = None,  # [num_heads] sink logits (gpt-oss)
    window: int | None = None,  # keys each row sees, itself included (sliding window)
) -> torch.Tensor:
    """Triton causal attention of sequences `first_seq..` over their paged contexts.

    No host sync: the grid comes from `max_query_len` (python int, an upper bound of the
    chunk lengths) and the shapes. `config` overrides `prefill_config` (tests, tuning).
    `sinks` and `window` are gpt-oss's attention sinks and sliding window (module doc).
    """
    if out is None:
        out = torch.empty_like(query)
    num_seqs = seq_lens.shape[0] - first_seq
    if num_seqs <= 0 or max_query_len <= 0:
        return out
    _, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    for t in (query, k_cache, v_cache, out):
        if t.stride(-1) != 1:
            raise ValueError("paged_prefill_attention_triton needs a unit stride on head_dim")
    if window is not None and window < 1:
        raise ValueError(f"a sliding window needs at least one key, got {window}")
    block_m, block_n, num_warps, num_stages = config or prefill_config(query.dtype, head_dim)
    num_m_tiles = cdiv(max_query_len, block_m)
    _prefill_kernel[(num_m_tiles, num_seqs, num_heads)](
        query,
        k_cache,
        v_cache,
        query_start_loc,
        seq_lens,
        block_tables,
        sinks if sinks is not None else out,
        window if window is not None else 0,
        out,
        scale * math.log2(math.e),
        first_seq,
        num_m_tiles,
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
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_D=next_power_of_2(head_dim),
        BLOCK_SIZE=block_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HAS_SINKS=sinks is not None,
        HAS_WINDOW=window is not None,
        DOT_DTYPE=dot_dtype(query.dtype),
        DOT_PRECISION=dot_precision(query.dtype),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def paged_prefill_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    max_query_len: int,
    scale: float,
    out: torch.Tensor | None = None,
    first_seq: int = 0,
) -> torch.Tensor:
    """Prefill attention with the fastest kernel for the device."""
    fn = paged_prefill_attention_triton if use_triton(query) else paged_prefill_attention_torch
    return fn(
        query, k_cache, v_cache, query_start_loc, seq_lens, block_tables, max_query_len, scale,
        out, first_seq,
    )
