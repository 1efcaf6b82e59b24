"""Rotary position embedding of q and k, in place, from precomputed cos/sin tables.

Half-split ("neox") layout, as Llama checkpoints in Hugging Face form use: with
`x = [x1, x2]` (halves of head_dim), `rot(x) = [x1*cos - x2*sin, x2*cos + x1*sin]`, computed
in float32 and rounded back. `cos`, `sin`: float32 `[max_position, head_dim // 2]` (any rope
scaling already folded in). `q`, `k` may be strided views of one fused QKV output.
"""

from __future__ import annotations

import torch

from corral.kernels._triton import jit, next_power_of_2, tl, use_triton

__all__ = ["rotary_embedding", "rotary_embedding_torch", "rotary_embedding_triton"]


def rotary_embedding_torch(
    positions: torch.Tensor,  # int [num_tokens]
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    cos: torch.Tensor,  # f32 [max_position, head_dim // 2]
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: rotates `q` and `k` in place and returns them."""
    c = cos[positions].unsqueeze(1)  # [T, 1, D/2]
    s = sin[positions].unsqueeze(1)
    for x in (q, k):
        x1, x2 = x.float().chunk(2, dim=-1)
        x.copy_(torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1))
    return q, k


@jit
def _rotary_kernel(
    positions_ptr,
    q_ptr,
    k_ptr,
    cos_ptr,
    sin_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_table,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    # One program per token: all query heads, then all KV heads.
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)
    dim_mask = dims < HALF
    c = tl.load(cos_ptr + pos * stride_table + dims, mask=dim_mask, other=0.0)[None, :]
    s = tl.load(sin_ptr + pos * stride_table + dims, mask=dim_mask, other=0.0)[None, :]
    heads = tl.arange(0, BLOCK_H)

    mask = (heads[:, None] < NUM_HEADS) & dim_mask[None, :]
    base = q_ptr + token * stride_qt + heads[:, None] * stride_qh + dims[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(base, (x1 * c - x2 * s).to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(base + HALF, (x2 * c + x1 * s).to(q_ptr.dtype.element_ty), mask=mask)

    mask = (heads[:, None] < NUM_KV_HEADS) & dim_mask[None, :]
    base = k_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(base, (x1 * c - x2 * s).to(k_ptr.dtype.element_ty), mask=mask)
    tl.store(base + HALF, (x2 * c + x1 * s).to(k_ptr.dtype.element_ty), mask=mask)


def rotary_embedding_triton(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of `rotary_embedding_torch` (in place, capture-safe)."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if q.stride(-1) != 1 or k.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride(-1) != 1:
        raise ValueError("rotary_embedding_triton needs a unit stride on the last dim")
    if cos.stride(0) != sin.stride(0):
        raise ValueError("rotary_embedding_triton needs cos and sin tables of one layout")
    if num_tokens == 0:
        return q, k
    half = head_dim // 2
    _rotary_kernel[(num_tokens,)](
        positions,
        q,
        k,
        cos,
        sin,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos.stride(0),
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        HALF=half,
        BLOCK_H=next_power_of_2(max(num_heads, num_kv_heads)),
        BLOCK_HALF=next_power_of_2(half),
        num_warps=4,
    )
    return q, k


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding in place with the fastest kernel for the device."""
    fn = rotary_embedding_triton if use_triton(q) else rotary_embedding_torch
    return fn(positions, q, k, cos, sin)
