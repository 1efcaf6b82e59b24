"""Torch references of the paged-KV primitives: writing a step's K/V into its slots and
gathering a sequence's blocks into one contiguous context (the CPU path, and what the
Triton kernels are checked against)."""

from __future__ import annotations

import torch


def write_kv_cache_torch(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # int64 [num_tokens], -1 = skip
) -> None:
    """Store each token's K/V at its slot; slots of -1 (padding) are skipped."""
    valid = slot_mapping >= 0
    if not bool(valid.all()):
        key, value, slot_mapping = key[valid], value[valid], slot_mapping[valid]
    k_flat = k_cache.view(-1, *k_cache.shape[2:])
    v_flat = v_cache.view(-1, *v_cache.shape[2:])
    k_flat.index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_flat.index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def gather_context(
    cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # int32 [num_seqs, max_blocks]
    num_blocks: int,
    workspace: torch.Tensor | None = None,  # flat, same dtype/device as cache, large enough
) -> torch.Tensor:  # [num_seqs, num_blocks * block_size, num_kv_heads, head_dim]
    """Copy each sequence's first `num_blocks` blocks into one contiguous tensor.

    With a `workspace` the copy lands in it (a view of its front is returned), so no fresh
    buffer is allocated: on CPU a fresh buffer of tens of MB is new memory from the OS on
    every call, and its page faults cost several times the copy itself.
    """
    index = block_tables[:, :num_blocks].reshape(-1).long()
    rows = cache.view(cache.shape[0], -1)  # [num_blocks, block_size * Hkv * D]
    if workspace is None:
        blocks = rows.index_select(0, index)
    else:
        out = workspace[: index.numel() * rows.shape[1]].view(index.numel(), rows.shape[1])
        blocks = torch.index_select(rows, 0, index, out=out)
    return blocks.view(block_tables.shape[0], -1, *cache.shape[2:])
