"""gpt-oss's mixture of experts: each token through its top-k experts, each a clamped SwiGLU
with biases, weighted and summed.

    h = x @ gate_up[e] + gate_up_bias[e]               # [2 * inter], gate and up interleaved
    gate = min(h[0::2], limit);  up = clamp(h[1::2], -limit, limit)
    act = (up + 1) * gate * sigmoid(alpha * gate)
    out[t] = sum_k weight[t, k] * (act @ down[e] + down_bias[e]),   e = ids[t, k]

Weights keep the checkpoint's layout: `gate_up [E, hidden, 2 * inter]` (column `2j` is gate
channel `j`, `2j + 1` its up channel), `gate_up_bias [E, 2 * inter]`, `down [E, inter,
hidden]`, `down_bias [E, hidden]`.

The Triton version shares `fused_moe`'s plan: pairs sorted by expert (`moe_align`), a grouped
GEMM over the gate-up columns with bias and activation in the epilogue (one contiguous
`[BLOCK_K, 2 * BLOCK_N]` weight tile per step, split into gate and up after the product), then
`fused_moe`'s down kernel with the bias and routing weight, and a sum over top-k. No host
sync: CUDA-graph safe.
"""

from __future__ import annotations

import torch

from corral.kernels._triton import cdiv, dot_dtype, dot_precision, jit, tl, use_triton
from corral.kernels.fused_moe import moe_blocks, moe_down
from corral.kernels.moe_align import align_pairs_by_expert

__all__ = ["clamped_swiglu_moe", "clamped_swiglu_moe_torch", "clamped_swiglu_moe_triton"]


def clamped_swiglu_moe_torch(
    hidden: torch.Tensor,  # [num_tokens, hidden]
    gate_up: torch.Tensor,  # [num_experts, hidden, 2 * inter], interleaved columns
    gate_up_bias: torch.Tensor,  # [num_experts, 2 * inter]
    down: torch.Tensor,  # [num_experts, inter, hidden]
    down_bias: torch.Tensor,  # [num_experts, hidden]
    topk_weights: torch.Tensor,  # [num_tokens, top_k]
    topk_ids: torch.Tensor,  # [num_tokens, top_k]
    alpha: float = 1.702,
    limit: float = 7.0,
) -> torch.Tensor:  # [num_tokens, hidden]
    """Reference (and the CPU path): one expert at a time over the tokens routed to it,
    each op rounded to the input dtype as transformers' experts do."""
    out = torch.zeros_like(hidden)
    for expert in topk_ids.unique().tolist():
        tokens, slot = torch.where(topk_ids == expert)
        h = hidden[tokens] @ gate_up[expert] + gate_up_bias[expert]
        gate = h[:, ::2].clamp(max=limit)
        up = h[:, 1::2].clamp(-limit, limit)
        act = (up + 1) * gate * torch.sigmoid(gate * alpha)
        y = act @ down[expert] + down_bias[expert]
        out.index_add_(0, tokens, (y * topk_weights[tokens, slot, None]).to(hidden.dtype))
    return out


@jit(do_not_specialize=("num_pairs",))
def _gate_up_kernel(
    x_ptr,  # [num_tokens, HIDDEN]
    w_ptr,  # [num_experts, HIDDEN, 2 * INTER], gate and up columns interleaved
    bias_ptr,  # [num_experts, 2 * INTER]
    out_ptr,  # [num_pairs, INTER]: the activation of each pair
    sorted_pairs_ptr,  # [capacity]
    block_experts_ptr,  # [capacity // BLOCK_M]
    num_pairs,
    alpha,
    limit,
    stride_x,
    stride_we,
    stride_wk,
    stride_be,
    stride_o,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  # output channels per program: 2 * BLOCK_N weight columns
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Grid: (blocks of sorted pairs, blocks of INTER output channels).
    pid_m = tl.program_id(0)
    expert = tl.load(block_experts_ptr + pid_m)
    if expert < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_pairs_ptr + rows)  # [BLOCK_M]
    is_pair = pairs < num_pairs
    tokens = (pairs // TOP_K).to(tl.int64)
    wcols = tl.program_id(1) * 2 * BLOCK_N + tl.arange(0, 2 * BLOCK_N)  # [2 * BLOCK_N]
    is_wcol = wcols < 2 * INTER
    ks = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + tokens[:, None] * stride_x  # [BLOCK_M, 1]
    w_tile = w_ptr + expert.to(tl.int64) * stride_we + wcols[None, :]  # [1, 2 * BLOCK_N]
    acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
    for k0 in range(0, HIDDEN, BLOCK_K):
        is_k = k0 + ks < HIDDEN
        a = tl.load(x_rows + (k0 + ks)[None, :], mask=is_pair[:, None] & is_k[None, :],
                    other=0.0).to(DOT_DTYPE)
        w = tl.load(w_tile + (k0 + ks)[:, None] * stride_wk,
                    mask=is_k[:, None] & is_wcol[None, :], other=0.0).to(DOT_DTYPE)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    bias = tl.load(bias_ptr + expert.to(tl.int64) * stride_be + wcols, mask=is_wcol, other=0.0)
    dtype = out_ptr.dtype.element_ty
    h = (acc + bias.to(tl.float32)[None, :]).to(dtype).to(tl.float32)  # rounded like torch's
    gate, up = tl.split(tl.reshape(h, (BLOCK_M, BLOCK_N, 2)))  # even, odd columns
    gate = tl.minimum(gate, limit)
    up = tl.minimum(tl.maximum(up, -limit), limit)
    act = (up + 1.0) * gate / (1.0 + tl.exp(-alpha * gate))
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + pairs[:, None].to(tl.int64) * stride_o + cols[None, :], act.to(dtype),
             mask=is_pair[:, None] & (cols < INTER)[None, :])


def clamped_swiglu_moe_triton(
    hidden: torch.Tensor,
    gate_up: torch.Tensor,
    gate_up_bias: torch.Tensor,
    down: torch.Tensor,
    down_bias: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    alpha: float = 1.702,
    limit: float = 7.0,
) -> torch.Tensor:
    """Triton version of `clamped_swiglu_moe_torch` (same arguments); capture-safe."""
    num_tokens, top_k = topk_ids.shape
    num_experts, hidden_size, two_inter = gate_up.shape
    inter = two_inter // 2
    if two_inter % 2 or down.shape != (num_experts, inter, hidden_size):
        raise ValueError(f"down is {tuple(down.shape)}, expected "
                         f"{(num_experts, inter, hidden_size)} for gate_up "
                         f"{tuple(gate_up.shape)}")
    if gate_up_bias.shape != (num_experts, two_inter) or down_bias.shape != (
            num_experts, hidden_size):
        raise ValueError("expert biases do not match the expert weights")
    tensors = (hidden, gate_up, gate_up_bias, down, down_bias)
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("clamped_swiglu_moe_triton needs contiguous hidden states and weights")
    out = torch.empty_like(hidden)
    if num_tokens == 0:
        return out
    num_pairs = num_tokens * top_k
    blocks = moe_blocks(num_pairs, num_experts, hidden.device)
    block_m, block_n, block_k = blocks
    aligned = align_pairs_by_expert(topk_ids, num_experts, block_m)
    act = torch.empty((num_pairs, inter), dtype=hidden.dtype, device=hidden.device)
    _gate_up_kernel[(aligned.block_experts.numel(), cdiv(inter, block_n))](
        hidden, gate_up, gate_up_bias, act, aligned.sorted_pairs, aligned.block_experts,
        num_pairs, float(alpha), float(limit),
        hidden.stride(0), gate_up.stride(0), gate_up.stride(1), gate_up_bias.stride(0),
        act.stride(0),
        HIDDEN=hidden_size, INTER=inter, TOP_K=top_k, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, DOT_DTYPE=dot_dtype(hidden.dtype),
        DOT_PRECISION=dot_precision(hidden.dtype),
    )
    weights = topk_weights.reshape(-1).to(hidden.dtype)  # rounded as the reference does
    y = torch.empty((num_pairs, hidden_size), dtype=hidden.dtype, device=hidden.device)
    moe_down(act, down, down_bias, weights, aligned, down.stride(2), down.stride(1), y, blocks)
    return torch.sum(y.view(num_tokens, top_k, hidden_size), dim=1, out=out)


def clamped_swiglu_moe(
    hidden: torch.Tensor,
    gate_up: torch.Tensor,
    gate_up_bias: torch.Tensor,
    down: torch.Tensor,
    down_bias: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    alpha: float = 1.702,
    limit: float = 7.0,
) -> torch.Tensor:
    """gpt-oss's MoE MLP with the fastest kernel for the device: [num_tokens, hidden] out."""
    fn = clamped_swiglu_moe_triton if use_triton(hidden) else clamped_swiglu_moe_torch
    return fn(hidden, gate_up, gate_up_bias, down, down_bias, topk_weights, topk_ids,
              alpha, limit)
