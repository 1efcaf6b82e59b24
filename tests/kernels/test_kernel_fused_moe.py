"""Fused MoE: the pair alignment's invariants, the torch reference against a plain loop over
tokens, and the Triton kernels against the reference (CPU interpreter without a GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corral.kernels.fused_moe import fused_moe_torch, fused_moe_triton
from corral.kernels.moe_align import align_pairs_by_expert, aligned_capacity
from tests.kernels.kernel_batches import cpu_or_cuda, gpu, rel_error, requires_cuda, requires_triton


def _routing(num_tokens: int, num_experts: int, top_k: int, gen: torch.Generator):
    """Distinct experts per token (as top-k gives) and softmax-like weights."""
    scores = torch.rand(num_tokens, num_experts, generator=gen)
    weights, ids = scores.softmax(-1).topk(top_k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), ids


def _inputs(num_tokens, hidden, inter, num_experts, top_k, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=gen)
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=gen) / inter**0.5
    weights, ids = _routing(num_tokens, num_experts, top_k, gen)
    cast = [t.to(dtype).to(device) for t in (x, w13, w2)]
    return (*cast, weights.to(device), ids.to(device))


@pytest.mark.parametrize("num_tokens,num_experts,top_k,block_m", [
    (1, 8, 2, 16), (37, 8, 2, 16), (50, 128, 8, 16), (5, 4, 4, 64), (0, 4, 2, 16),
])
def test_alignment_groups_every_pair_once_by_expert(num_tokens, num_experts, top_k,
                                                    block_m) -> None:
    ids = _routing(num_tokens, num_experts, top_k, torch.Generator().manual_seed(3))[1]
    aligned = align_pairs_by_expert(ids, num_experts, block_m)
    num_pairs = num_tokens * top_k
    sorted_pairs = aligned.sorted_pairs.long()
    assert sorted_pairs.numel() == aligned_capacity(num_pairs, num_experts, block_m)
    real = sorted_pairs[sorted_pairs < num_pairs]
    assert sorted(real.tolist()) == list(range(num_pairs))  # each pair exactly once
    flat = ids.reshape(-1)
    for block, expert in enumerate(aligned.block_experts.tolist()):
        rows = sorted_pairs[block * block_m : (block + 1) * block_m]
        rows = rows[rows < num_pairs]
        if expert < 0:
            assert rows.numel() == 0
        else:
            assert rows.numel() > 0 and (flat[rows] == expert).all()
            assert rows.tolist() == sorted(rows.tolist())  # stable: token order kept
    used = (aligned.block_experts >= 0).sum().item()
    expected_blocks = sum(-(-c // block_m) for c in torch.bincount(
        flat, minlength=num_experts).tolist())
    assert used == expected_blocks


def test_reference_matches_a_loop_over_tokens() -> None:
    x, w13, w2, weights, ids = _inputs(9, 32, 24, 6, 3, torch.float64, "cpu", seed=5)
    out = fused_moe_torch(x, w13, w2, weights, ids)
    for t in range(9):
        expected = torch.zeros(32, dtype=torch.float64)
        for k in range(3):
            gate, up = (w13[ids[t, k]] @ x[t]).chunk(2)
            expected += weights[t, k] * (w2[ids[t, k]] @ (F.silu(gate) * up))
        torch.testing.assert_close(out[t], expected)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens,hidden,inter,num_experts,top_k", [
    (1, 64, 32, 8, 2),  # one decode token
    (21, 64, 48, 8, 2),  # inter not a multiple of the block
    (40, 96, 32, 16, 4),  # hidden not a multiple of the block; experts left unused
])
def test_triton_matches_reference(dtype, num_tokens, hidden, inter, num_experts,
                                  top_k) -> None:
    args = _inputs(num_tokens, hidden, inter, num_experts, top_k, dtype, cpu_or_cuda(),
                   seed=num_tokens)
    ref = fused_moe_torch(*args)
    out = fused_moe_triton(*args)
    assert out.dtype == ref.dtype and out.shape == ref.shape == (num_tokens, hidden)
    # float32: the same products summed in another order. bfloat16: the same five roundings
    # of other float32 sums; Triton's CPU interpreter truncates casts to bfloat16 (the GPU
    # rounds to nearest), which biases each of them.
    limit = 1e-5 if dtype == torch.float32 else (1e-2 if out.is_cuda else 3e-2)
    assert rel_error(out, ref) < limit


@requires_triton
def test_triton_empty_batch() -> None:
    x, w13, w2, weights, ids = _inputs(0, 64, 32, 4, 2, torch.float32, cpu_or_cuda(), seed=0)
    assert fused_moe_triton(x, w13, w2, weights, ids).shape == (0, 64)


@gpu
@requires_cuda
@requires_triton
@pytest.mark.parametrize("num_tokens", [1, 64, 2048])
def test_triton_qwen3_30b_a3b_shape(num_tokens) -> None:
    """Qwen3-30B-A3B: hidden 2048, 128 experts of width 768, 8 per token (bfloat16)."""
    args = _inputs(num_tokens, 2048, 768, 128, 8, torch.bfloat16, torch.device("cuda"),
                   seed=num_tokens)
    assert rel_error(fused_moe_triton(*args), fused_moe_torch(*args)) < 1e-2
