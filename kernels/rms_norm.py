"""RMSNorm, optionally fused with the residual add before it.

`rms_norm(x, weight, eps)` is `(x / rms(x)).to(dtype) * weight`, the statistics in float32
(Llama's RMSNorm). With `residual`, it first forms `h = x + residual` (rounded to the
input dtype, as a separate add would), then returns `(rms_norm(h), h)`: a decoder layer's
"add the sublayer output, normalise for the next sublayer" in one pass over memory.
"""

from __future__ import annotations

import torch

from corral.kernels._triton import jit, next_power_of_2, tl, use_triton

__all__ = ["rms_norm", "rms_norm_torch", "rms_norm_triton"]


def rms_norm_torch(
    x: torch.Tensor,  # [num_tokens, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # [num_tokens, hidden]
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference; returns the normalised tensor, or `(normalised, x + residual)`."""
    h = x if residual is None else x + residual
    h32 = h.float()
    normed = (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
    out = weight * normed
    return out if residual is None else (out, h)


@jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    residual_out_ptr,
    eps,
    stride_x,
    stride_r,
    stride_o,
    stride_ro,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    # One program per token row.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < HIDDEN
    h = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        h = (h.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_ro + cols, h, mask=mask)
    h32 = h.to(tl.float32)
    mean_square = tl.sum(h32 * h32, 0) / HIDDEN
    normed = (h32 * tl.rsqrt(mean_square + eps)).to(x_ptr.dtype.element_ty)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    out = w.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton version of `rms_norm_torch`: one pass, capture-safe."""
    num_tokens, hidden = x.shape
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    out = torch.empty((num_tokens, hidden), dtype=out_dtype, device=x.device)
    residual_out = torch.empty_like(x) if residual is not None else out
    if x.stride(-1) != 1 or (residual is not None and residual.stride(-1) != 1):
        raise ValueError("rms_norm_triton needs a unit stride on the hidden dim")
    if num_tokens:
        block = next_power_of_2(hidden)
        _rms_norm_kernel[(num_tokens,)](
            x,
            residual if residual is not None else x,
            weight,
            out,
            residual_out,
            eps,
            x.stride(0),
            residual.stride(0) if residual is not None else 0,
            out.stride(0),
            residual_out.stride(0),
            HIDDEN=hidden,
            BLOCK=block,
            HAS_RESIDUAL=residual is not None,
            num_warps=min(16, max(1, block // 512)),
        )
    return out if residual is None else (out, residual_out)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm (+ residual add) with the fastest kernel for the device."""
    fn = rms_norm_triton if use_triton(x) else rms_norm_torch
    return fn(x, weight, eps, residual)
