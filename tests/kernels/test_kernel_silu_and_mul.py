"""Triton SwiGLU activation against the torch reference."""

from __future__ import annotations

import pytest
import torch

from corral.kernels.silu_and_mul import silu_and_mul_torch, silu_and_mul_triton
from tests.kernels.kernel_batches import cpu_or_cuda, gpu, rel_error, requires_cuda, requires_triton

pytestmark = requires_triton


def _check(num_tokens: int, intermediate: int, dtype: torch.dtype, device, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    gate_up = (3 * torch.randn(num_tokens, 2 * intermediate, generator=gen)).to(dtype).to(device)
    ref = silu_and_mul_torch(gate_up)
    out = silu_and_mul_triton(gate_up)
    assert out.dtype == ref.dtype and out.shape == ref.shape == (num_tokens, intermediate)
    # Same rounding steps; only exp's last bits may differ between implementations. Triton's
    # CPU interpreter truncates float32 -> bfloat16 casts (the GPU rounds to nearest).
    limit = 1e-6 if dtype == torch.float32 else (4e-3 if out.is_cuda else 1.2e-2)
    assert rel_error(out, ref) < limit


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("intermediate", [64, 1536, 1000])
def test_silu_and_mul_matches_torch(dtype, intermediate) -> None:
    _check(5, intermediate, dtype, cpu_or_cuda(), seed=intermediate)


def test_silu_and_mul_empty_batch() -> None:
    out = silu_and_mul_triton(torch.zeros(0, 128, device=cpu_or_cuda()))
    assert out.shape == (0, 64)


def test_silu_and_mul_rejects_odd_width() -> None:
    with pytest.raises(ValueError, match="even"):
        silu_and_mul_triton(torch.zeros(2, 7, device=cpu_or_cuda()))


@gpu
@requires_cuda
def test_silu_and_mul_gpu_real_size() -> None:
    _check(4096, 14336, torch.bfloat16, torch.device("cuda"), seed=1)
