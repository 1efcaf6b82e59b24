"""Triton RMSNorm (+ residual) against the torch reference."""

from __future__ import annotations

import pytest
import torch

from corral.kernels.rms_norm import rms_norm_torch, rms_norm_triton
from tests.kernels.kernel_batches import (
    assert_same_rounding,
    cpu_or_cuda,
    gpu,
    rel_error,
    requires_cuda,
    requires_triton,
)

pytestmark = requires_triton


def _check(num_tokens, hidden, dtype, weight_dtype, with_residual, device, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(num_tokens, hidden, generator=gen)).to(dtype).to(device)
    weight = torch.randn(hidden, generator=gen).to(weight_dtype).to(device)
    residual = torch.randn(num_tokens, hidden, generator=gen).to(dtype).to(device)
    args = (x, weight, 1e-5, residual if with_residual else None)
    ref = rms_norm_torch(*args)
    out = rms_norm_triton(*args)
    if with_residual:
        assert_same_rounding(out[1], ref[1])  # the sum rounds like a torch add
        out, ref = out[0], ref[0]
    assert out.dtype == ref.dtype and out.shape == ref.shape
    # Same rounding steps; only the float32 reduction order differs.
    limit = 1e-6 if dtype == torch.float32 else 8e-3
    assert rel_error(out, ref) < limit


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("hidden", [64, 576, 1000])
def test_rms_norm_matches_torch(dtype, with_residual, hidden) -> None:
    _check(7, hidden, dtype, dtype, with_residual, cpu_or_cuda(), seed=hidden)


def test_rms_norm_float32_weight_on_bf16_input() -> None:
    _check(5, 128, torch.bfloat16, torch.float32, True, cpu_or_cuda(), seed=3)


@gpu
@requires_cuda
def test_rms_norm_gpu_real_size() -> None:
    for with_residual in (False, True):
        _check(4096, 4096, torch.bfloat16, torch.bfloat16, with_residual, torch.device("cuda"), 1)
