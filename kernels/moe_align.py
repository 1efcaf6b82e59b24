"""Token-expert pairs sorted by expert and padded per expert to the GEMM block size.

A mixture-of-experts layer sends each token to `top_k` experts: `num_tokens * top_k` pairs,
numbered `pair = token * top_k + k` (the flat index into `topk_ids`). The grouped GEMM
kernels of `fused_moe` take rows `BLOCK_M` at a time, and every row of a block must belong
to the same expert. `align_pairs_by_expert` lists the pairs expert by expert, each expert's
run padded up to a multiple of `BLOCK_M` with the sentinel `num_pairs`, and names the
expert of every block (-1 past the last expert's run).

Only torch tensor ops with shapes fixed by `(num_pairs, num_experts, block_m)`: no host
sync, so it can run inside a captured CUDA graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["AlignedPairs", "align_pairs_by_expert", "aligned_capacity"]


class AlignedPairs(NamedTuple):
    """Pairs grouped by expert. `sorted_pairs[i] == num_pairs` marks a padding row."""

    sorted_pairs: torch.Tensor  # int32 [capacity], pair ids, expert by expert
    block_experts: torch.Tensor  # int32 [capacity // block_m], -1 for unused blocks
    num_pairs: int


def aligned_capacity(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Rows enough for any routing: each expert's run pads by at most `block_m - 1`."""
    padded = num_pairs + num_experts * (block_m - 1)
    return -(-padded // block_m) * block_m


def align_pairs_by_expert(topk_ids: torch.Tensor, num_experts: int,
                          block_m: int) -> AlignedPairs:
    """topk_ids: [num_tokens, top_k] expert ids in `[0, num_experts)`."""
    flat = topk_ids.reshape(-1).long()  # [num_pairs]
    num_pairs = flat.numel()
    device = flat.device
    counts = torch.zeros(num_experts, dtype=torch.long, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # bincount without a host sync
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)  # [num_experts]
    padded_start = padded_end - padded
    start = counts.cumsum(0) - counts
    order = torch.sort(flat, stable=True).indices  # [num_pairs] pair ids grouped by expert
    experts = flat[order]
    rank = torch.arange(num_pairs, device=device) - start[experts]  # index in its run
    capacity = aligned_capacity(num_pairs, num_experts, block_m)
    sorted_pairs = torch.full((capacity,), num_pairs, dtype=torch.int32, device=device)
    sorted_pairs[padded_start[experts] + rank] = order.to(torch.int32)
    block_starts = torch.arange(0, capacity, block_m, device=device)
    block_experts = torch.searchsorted(padded_end, block_starts, right=True)
    block_experts = torch.where(block_experts < num_experts, block_experts, -1)
    return AlignedPairs(sorted_pairs, block_experts.to(torch.int32), num_pairs)
