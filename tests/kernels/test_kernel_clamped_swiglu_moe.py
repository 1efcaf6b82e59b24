"""gpt-oss's MoE (biases, interleaved gate/up columns, clamped SwiGLU): the torch reference
against a plain loop over tokens, and the Triton kernels against the reference (CPU
interpreter without a GPU)."""

from __future__ import annotations

import pytest
import torch

from corral.kernels.clamped_swiglu_moe import (
    clamped_swiglu_moe_torch,
    clamped_swiglu_moe_triton,
)
from tests.kernels.kernel_batches import cpu_or_cuda, gpu, rel_error, requires_cuda, requires_triton


def _inputs(num_tokens, hidden, inter, num_experts, top_k, dtype, device, seed, gain=1.0):
    """`gain` scales the gate-up product: at 3 many gate/up values pass the clamp of 7."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=gen)
    gate_up = gain * torch.randn(num_experts, hidden, 2 * inter, generator=gen) / hidden**0.5
    gate_up_bias = torch.randn(num_experts, 2 * inter, generator=gen)
    down = torch.randn(num_experts, inter, hidden, generator=gen) / inter**0.5
    down_bias = torch.randn(num_experts, hidden, generator=gen)
    scores = torch.randn(num_tokens, num_experts, generator=gen)
    logits, ids = scores.topk(top_k, dim=-1)
    weights = torch.softmax(logits, dim=-1)
    cast = [t.to(dtype).to(device) for t in (x, gate_up, gate_up_bias, down, down_bias)]
    return (*cast, weights.to(dtype).to(device), ids.to(device))


def test_reference_matches_a_loop_over_tokens() -> None:
    args = _inputs(9, 32, 24, 6, 3, torch.float64, "cpu", seed=5, gain=3.0)
    x, gate_up, gate_up_bias, down, down_bias, weights, ids = args
    out = clamped_swiglu_moe_torch(*args, alpha=1.702, limit=7.0)
    clamped = 0
    for t in range(9):
        expected = torch.zeros(32, dtype=torch.float64)
        for k in range(3):
            e = ids[t, k]
            h = x[t] @ gate_up[e] + gate_up_bias[e]
            gate, up = h[0::2], h[1::2]
            clamped += int((gate > 7).sum() + (up.abs() > 7).sum())
            gate, up = gate.clamp(max=7.0), up.clamp(-7.0, 7.0)
            act = (up + 1) * gate * torch.sigmoid(1.702 * gate)
            expected += weights[t, k] * (act @ down[e] + down_bias[e])
        torch.testing.assert_close(out[t], expected)
    assert clamped > 0  # the clamps were exercised


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens,hidden,inter,num_experts,top_k", [
    (1, 64, 32, 8, 2),  # one decode token
    (21, 64, 48, 8, 2),  # inter not a multiple of the block
    (40, 96, 40, 16, 4),  # hidden not a multiple of the block; experts left unused
])
@pytest.mark.parametrize("gain", [1.0, 3.0])
def test_triton_matches_reference(dtype, num_tokens, hidden, inter, num_experts, top_k,
                                  gain) -> None:
    args = _inputs(num_tokens, hidden, inter, num_experts, top_k, dtype, cpu_or_cuda(),
                   seed=num_tokens, gain=gain)
    ref = clamped_swiglu_moe_torch(*args, alpha=1.702, limit=7.0)
    out = clamped_swiglu_moe_triton(*args, alpha=1.702, limit=7.0)
    assert out.dtype == ref.dtype and out.shape == ref.shape == (num_tokens, hidden)
    # float32: the same products summed in another order. bfloat16: the reference rounds
    # after every op, the kernel after the product with its bias and after the
    # activation; Triton's CPU interpreter truncates casts to bfloat16.
    limit = 1e-5 if dtype == torch.float32 else (2e-2 if out.is_cuda else 3e-2)
    assert rel_error(out, ref) < limit


@requires_triton
def test_triton_other_alpha_and_limit() -> None:
    args = _inputs(12, 64, 32, 4, 2, torch.float32, cpu_or_cuda(), seed=3, gain=3.0)
    ref = clamped_swiglu_moe_torch(*args, alpha=1.0, limit=2.5)
    assert rel_error(clamped_swiglu_moe_triton(*args, alpha=1.0, limit=2.5), ref) < 1e-5
    assert rel_error(clamped_swiglu_moe_torch(*args), ref) > 1e-2  # the settings matter


@requires_triton
def test_triton_empty_batch() -> None:
    args = _inputs(0, 64, 32, 4, 2, torch.float32, cpu_or_cuda(), seed=0)
    assert clamped_swiglu_moe_triton(*args).shape == (0, 64)


@gpu
@requires_cuda
@requires_triton
@pytest.mark.parametrize("num_tokens", [1, 64, 2048])
def test_triton_gpt_oss_20b_shape(num_tokens) -> None:
    """gpt-oss-20b: hidden 2880, 32 experts of width 2880, 4 per token (bfloat16)."""
    args = _inputs(num_tokens, 2880, 2880, 32, 4, torch.bfloat16, torch.device("cuda"),
                   seed=num_tokens, gain=3.0)
    assert rel_error(clamped_swiglu_moe_triton(*args), clamped_swiglu_moe_torch(*args)) < 2e-2
