"""Attention over the paged KV cache: the metadata the runner builds and the torch backend.

KV cache layout, per layer: `k_cache`, `v_cache` of shape
`[num_blocks, block_size, num_kv_heads, head_dim]`. Token `t` of a sequence lives in slot
`block_table[t // block_size] * block_size + t % block_size`.

The batch is flattened: the new tokens of all scheduled sequences, one after another
(`query_start_loc` marks where each sequence's tokens start). Each sequence attends
causally over its whole context: the cached tokens plus its new ones.

On CPU, the torch backend computes decode rows with the native kernel
(`corral.kernels.paged_decode_attention_cpu`) when it builds, else by gathering contexts
and calling SDPA.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from corral.kernels import paged_decode_attention_cpu as cpu_decode
from corral.kernels.attention_metadata import AttentionMetadata
from corral.kernels.paged_kv_reference import gather_context, write_kv_cache_torch

__all__ = ["AttentionBackend", "AttentionMetadata", "GatherWorkspace", "TorchAttentionBackend",
           "gather_context", "paged_attention_torch", "write_kv_cache_torch"]

# Whether the native CPU decode kernel is loaded: None until the first CPU decode asks.
_CPU_DECODE_KERNEL: bool | None = None


class AttentionBackend(Protocol):
    """Writes this step's K/V into the cache, then attends over the cached context."""

    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        ...


class GatherWorkspace:
    """Two growable flat buffers (keys, values) reused by every layer's gathers.

    Safe to share across layers because each layer consumes its gathered context before the
    next layer gathers. Grows to the largest gather seen; never shrinks.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, like: torch.Tensor) -> torch.Tensor:
        buf = self._buffers.get(name)
        stale = buf is None or buf.dtype != like.dtype or buf.device != like.device
        if stale or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf


class TorchAttentionBackend:
    """Pure-torch paged attention: batched decode, per-sequence causal prefill.

    Decodes are gathered into padded batches of similar length and attend with a length
    mask; each prefill chunk attends over its gathered context with a causal offset. GQA is
    handled without repeating K/V in memory. Gathers reuse one workspace.
    """

    def __init__(self) -> None:
        self.workspace = GatherWorkspace()

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        write_kv_cache_torch(key, value, k_cache, v_cache, meta.slot_mapping)
        return paged_attention_torch(query, k_cache, v_cache, meta, scale, self.workspace)


def paged_attention_torch(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    workspace: GatherWorkspace | None = None,
    cpu_kernel: bool = True,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Reference paged attention over the flattened varlen batch (cache already written).

    Decode rows go through the native CPU kernel when `cpu_kernel` is set and it applies
    (`use_cpu_decode_kernel`), else through length-grouped gathers and SDPA.
    """
    out = torch.empty_like(query)
    block_size = k_cache.shape[1]
    seq_lens = meta.seq_lens_cpu if meta.seq_lens_cpu is not None else meta.seq_lens.tolist()
    starts = (
        meta.query_start_loc_cpu
        if meta.query_start_loc_cpu is not None
        else meta.query_start_loc.tolist()
    )
    num_decodes = meta.num_decodes
    if num_decodes > 0 and cpu_kernel and use_cpu_decode_kernel(query, k_cache):
        cpu_decode.paged_decode_attention_cpu(
            query[:num_decodes], k_cache, v_cache, meta.block_tables[:num_decodes],
            meta.seq_lens[:num_decodes], scale, out=out[:num_decodes],
        )
    else:
        for group in _length_groups(seq_lens[:num_decodes]):
            index = torch.tensor(group, device=query.device)
            out[index] = _decode_batch(
                query[index], k_cache, v_cache, meta.block_tables[index], meta.seq_lens[index],
                seq_lens[group[0]], block_size, scale, workspace,
            )
    for i in range(num_decodes, len(seq_lens)):
        start, end = starts[i], starts[i + 1]
        if end == start:
            continue
        seq_len = seq_lens[i]
        num_blocks = (seq_len + block_size - 1) // block_size
        table = meta.block_tables[i : i + 1]
        keys, values = _gather_pair(k_cache, v_cache, table, num_blocks, workspace)
        keys, values = keys[0, :seq_len], values[0, :seq_len]
        out[start:end] = _causal_chunk(query[start:end], keys, values, scale)
    return out


def use_cpu_decode_kernel(query: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether decode rows of `query` can go through the native CPU kernel (loads it once)."""
    global _CPU_DECODE_KERNEL
    if query.device.type != "cpu" or query.dtype not in cpu_decode.SUPPORTED_DTYPES:
        return False
    if k_cache.dtype != query.dtype:
        return False
    if _CPU_DECODE_KERNEL is None:
        _CPU_DECODE_KERNEL = cpu_decode.cpu_decode_kernel_available()
    return _CPU_DECODE_KERNEL


def _gather_pair(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks]
    num_blocks: int,
    workspace: GatherWorkspace | None,
) -> tuple[torch.Tensor, torch.Tensor]:  # 2 x [num_seqs, num_blocks * block_size, Hkv, D]
    if workspace is None:
        return (gather_context(k_cache, block_tables, num_blocks),
                gather_context(v_cache, block_tables, num_blocks))
    numel = block_tables.shape[0] * num_blocks * k_cache[0].numel()
    return (
        gather_context(k_cache, block_tables, num_blocks, workspace.get("k", numel, k_cache)),
        gather_context(v_cache, block_tables, num_blocks, workspace.get("v", numel, v_cache)),
    )


def _length_groups(seq_lens: list[int], max_waste: float = 0.5) -> list[list[int]]:
    """Split decode rows into groups of similar context length (longest first in each), so
    padding every row to its group's longest context wastes at most about `max_waste`."""
    order = sorted(range(len(seq_lens)), key=lambda i: -seq_lens[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and seq_lens[i] >= seq_lens[groups[-1][0]] * (1 - max_waste):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _decode_batch(
    query: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks]
    seq_lens: torch.Tensor,  # [B]
    max_seq_len: int,
    block_size: int,
    scale: float,
    workspace: GatherWorkspace | None = None,
) -> torch.Tensor:  # [B, Hq, D]
    num_blocks = (max_seq_len + block_size - 1) // block_size
    keys, values = _gather_pair(k_cache, v_cache, block_tables, num_blocks, workspace)
    keys, values = keys.transpose(1, 2), values.transpose(1, 2)  # [B, Hkv, L, D]
    positions = torch.arange(keys.shape[2], device=query.device)
    mask = positions[None, :] < seq_lens[:, None].to(positions.device)  # [B, L]
    num_seqs, num_heads, head_dim = query.shape
    num_kv_heads = keys.shape[1]
    # GQA without repeating K/V: the query heads sharing a KV head act as its queries.
    q = query.view(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(
        q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask[:, None, None, :], scale=scale,
    )  # [B, Hkv, G, D]
    return out.reshape(num_seqs, num_heads, head_dim)


def _causal_chunk(
    query: torch.Tensor,  # [q_len, Hq, D]: the last q_len tokens of the context
    keys: torch.Tensor,  # [seq_len, Hkv, D]
    values: torch.Tensor,
    scale: float,
) -> torch.Tensor:  # [q_len, Hq, D]
    q_len, seq_len = query.shape[0], keys.shape[0]
    q = query.transpose(0, 1).unsqueeze(0)  # [1, Hq, q_len, D]
    k = keys.transpose(0, 1).unsqueeze(0).to(q.dtype)
    v = values.transpose(0, 1).unsqueeze(0).to(q.dtype)
    gqa = k.shape[1] != q.shape[1]
    if q_len == seq_len:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        offset = seq_len - q_len
        rows = torch.arange(q_len, device=q.device)[:, None] + offset
        cols = torch.arange(seq_len, device=q.device)[None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=cols <= rows, scale=scale, enable_gqa=gqa
        )
    return out[0].transpose(0, 1)
