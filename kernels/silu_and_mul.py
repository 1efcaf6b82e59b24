"""SwiGLU activation: `silu(gate) * up` from the fused gate-up projection in one pass.

The MLP's gate-up projection yields `[num_tokens, 2 * intermediate]` (gate first, then up).
The torch version runs two elementwise kernels and materialises `silu(gate)`; the Triton
kernel reads both halves once and writes the product, computing in float32 and rounding
once per op as torch does (silu rounded to the input dtype, then the product).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.kernels._triton import cdiv, jit, tl, use_triton

__all__ = ["silu_and_mul", "silu_and_mul_torch", "silu_and_mul_triton"]

_BLOCK = 1024  # columns per program


def silu_and_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    """Reference. gate_up: [num_tokens, 2 * intermediate] -> [num_tokens, intermediate]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@jit
def _silu_and_mul_kernel(
    gate_up_ptr,
    out_ptr,
    stride_in,
    stride_out,
    INTERMEDIATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Grid: (token rows, column blocks of the intermediate dim).
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTERMEDIATE
    gate = tl.load(gate_up_ptr + row * stride_in + cols, mask=mask, other=0.0)
    up = tl.load(gate_up_ptr + row * stride_in + INTERMEDIATE + cols, mask=mask, other=0.0)
    g32 = gate.to(tl.float32)
    act = (g32 / (1.0 + tl.exp(-g32))).to(gate.dtype)  # silu, rounded like torch's
    out = act.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_triton(gate_up: torch.Tensor) -> torch.Tensor:
    """Triton version of `silu_and_mul_torch`; capture-safe."""
    num_tokens, width = gate_up.shape
    if width % 2 or gate_up.stride(-1) != 1:
        raise ValueError("silu_and_mul_triton needs an even, unit-stride last dim")
    intermediate = width // 2
    out = torch.empty((num_tokens, intermediate), dtype=gate_up.dtype, device=gate_up.device)
    if num_tokens:
        grid = (num_tokens, cdiv(intermediate, _BLOCK))
        _silu_and_mul_kernel[grid](
            gate_up, out, gate_up.stride(0), out.stride(0),
            INTERMEDIATE=intermediate, BLOCK=_BLOCK, num_warps=4,
        )
    return out


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` with the fastest kernel for the device."""
    fn = silu_and_mul_triton if use_triton(gate_up) else silu_and_mul_torch
    return fn(gate_up)
