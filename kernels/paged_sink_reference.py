"""Torch reference of paged attention with attention sinks and a sliding window (gpt-oss).

A *sink* is one learned logit per query head that joins every softmax without a value:
`p_j = exp(s_j) / (sum_k exp(s_k) + exp(sink))`, so a head may attend to nothing. A sliding
window of `w` lets a query at position `t` see keys `t - w < j <= t` only. Each sequence's
query rows attend over its gathered context, one sequence at a time: the CPU path, and what
the Triton kernels (`paged_decode_attention`, `paged_prefill_attention` with `sinks` and
`window`) are checked against.
"""

from __future__ import annotations

import torch

from corral.kernels.attention_metadata import AttentionMetadata
from corral.kernels.paged_kv_reference import gather_context

__all__ = ["paged_sink_attention", "sink_attention"]


def paged_sink_attention(
    query: torch.Tensor,  # [num_tokens, Hq, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sinks: torch.Tensor | None,  # [Hq] logits, or None
    window: int | None,  # keys a query sees (itself included), or None: all before it
    first_seq: int = 0,
) -> torch.Tensor:  # [num_tokens, Hq, D]
    """Attention of every sequence's new rows over its paged context (cache already
    written); rows of sequences before `first_seq` are left uninitialised."""
    out = torch.empty_like(query)
    block_size = k_cache.shape[1]
    seq_lens = meta.seq_lens_cpu if meta.seq_lens_cpu is not None else meta.seq_lens.tolist()
    starts = (meta.query_start_loc_cpu if meta.query_start_loc_cpu is not None
              else meta.query_start_loc.tolist())
    for i in range(first_seq, len(seq_lens)):
        seq_len = seq_lens[i]
        start, end = starts[i], starts[i + 1]
        if end == start:
            continue
        num_blocks = (seq_len + block_size - 1) // block_size
        table = meta.block_tables[i : i + 1]
        keys = gather_context(k_cache, table, num_blocks)[0, :seq_len]
        values = gather_context(v_cache, table, num_blocks)[0, :seq_len]
        out[start:end] = sink_attention(query[start:end], keys, values, scale, sinks, window)
    return out


def sink_attention(
    query: torch.Tensor,  # [q_len, Hq, D]: the last q_len tokens of the context
    keys: torch.Tensor,  # [seq_len, Hkv, D]
    values: torch.Tensor,
    scale: float,
    sinks: torch.Tensor | None,
    window: int | None,
) -> torch.Tensor:  # [q_len, Hq, D]
    """Causal attention of one sequence's last `q_len` rows, in float32."""
    q_len, num_heads, _ = query.shape
    seq_len, num_kv_heads, _ = keys.shape
    group = num_heads // num_kv_heads
    q = query.transpose(0, 1).float()  # [Hq, q_len, D]
    k = keys.transpose(0, 1).float().repeat_interleave(group, dim=0)  # [Hq, seq_len, D]
    v = values.transpose(0, 1).float().repeat_interleave(group, dim=0)
    scores = torch.matmul(q, k.transpose(1, 2)) * scale  # [Hq, q_len, seq_len]
    rows = torch.arange(q_len, device=q.device)[:, None] + (seq_len - q_len)
    cols = torch.arange(seq_len, device=q.device)[None, :]
    visible = cols <= rows
    if window is not None:
        visible &= cols > rows - window
    scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        sink = sinks.float().view(num_heads, 1, 1).expand(num_heads, q_len, 1)
        scores = torch.cat([scores, sink], dim=-1)
    probs = torch.softmax(scores, dim=-1)[..., :seq_len]
    return torch.matmul(probs, v).transpose(0, 1).to(query.dtype)
