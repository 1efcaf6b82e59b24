"""Mixture-of-experts MLP: each token through its top-k SwiGLU experts, weighted and summed.

    out[t] = sum_k weight[t, k] * w2[e] @ (silu(gate_e(x[t])) * up_e(x[t])),  e = ids[t, k]

with the experts' weights stacked: `w13 [num_experts, 2 * inter, hidden]` (gate rows, then
up rows) and `w2 [num_experts, hidden, inter]`. Rounding follows the transformers
implementation: the gate-up product, silu, the activation, the down product and its
routing-weighted copy are each rounded to the input dtype; the sum over top-k is one sum.

The Triton version sorts the token-expert pairs by expert (`moe_align`) and runs two
grouped GEMMs over blocks of `BLOCK_M` pairs that share an expert: w13 with the SwiGLU
applied in the epilogue (the `[pairs, 2 * inter]` product is never stored), then w2 with
the routing weight applied; a sum over top-k ends it. No host sync: CUDA-graph safe.

The down kernel also serves gpt-oss's experts (`clamped_swiglu_moe`): any weight strides
(its `down [E, inter, hidden]` keeps the checkpoint's layout) and an optional per-expert
bias (`HAS_BIAS`, compiled away here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.kernels._triton import cdiv, dot_dtype, dot_precision, jit, tl, use_triton
from corral.kernels.moe_align import AlignedPairs, align_pairs_by_expert

__all__ = ["fused_moe", "fused_moe_torch", "fused_moe_triton"]


def fused_moe_torch(
    hidden: torch.Tensor,  # [num_tokens, hidden]
    w13: torch.Tensor,  # [num_experts, 2 * inter, hidden]
    w2: torch.Tensor,  # [num_experts, hidden, inter]
    topk_weights: torch.Tensor,  # [num_tokens, top_k]
    topk_ids: torch.Tensor,  # [num_tokens, top_k]
) -> torch.Tensor:
    """Reference: the pairs gathered expert by expert, one matmul pair per expert used."""
    num_tokens, top_k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    order = torch.sort(flat, stable=True).indices  # [num_pairs] grouped by expert
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()
    x = hidden[order // top_k]  # [num_pairs, hidden], rows grouped by expert
    out = torch.empty_like(x)
    start = 0
    for expert, count in enumerate(counts):
        if count:
            rows = slice(start, start + count)
            gate, up = F.linear(x[rows], w13[expert]).chunk(2, dim=-1)
            out[rows] = F.linear(F.silu(gate) * up, w2[expert])
            start += count
    weighted = torch.empty_like(out)
    weighted[order] = out * topk_weights.reshape(-1)[order, None].to(out.dtype)
    return weighted.view(num_tokens, top_k, -1).sum(dim=1)


@jit(do_not_specialize=("num_pairs",))
def _moe_gate_up_kernel(
    x_ptr,  # [num_tokens, HIDDEN]
    w_ptr,  # [num_experts, 2 * INTER, HIDDEN]
    out_ptr,  # [num_pairs, INTER]: silu(gate) * up of each pair
    sorted_pairs_ptr,  # [capacity]
    block_experts_ptr,  # [capacity // BLOCK_M]
    num_pairs,
    stride_x,
    stride_we,
    stride_wn,
    stride_o,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Grid: (blocks of sorted pairs, blocks of INTER columns).
    pid_m = tl.program_id(0)
    expert = tl.load(block_experts_ptr + pid_m)
    if expert < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_pairs_ptr + rows)  # [BLOCK_M]
    is_pair = pairs < num_pairs
    tokens = (pairs // TOP_K).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    is_col = cols < INTER
    ks = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + tokens[:, None] * stride_x  # [BLOCK_M, 1]
    # Weight tiles read transposed, [BLOCK_K, BLOCK_N]: hidden along dim 0.
    gate_cols = w_ptr + expert.to(tl.int64) * stride_we + cols[None, :] * stride_wn
    up_cols = gate_cols + INTER * stride_wn
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, HIDDEN, BLOCK_K):
        is_k = k0 + ks < HIDDEN
        a = tl.load(x_rows + (k0 + ks)[None, :], mask=is_pair[:, None] & is_k[None, :],
                    other=0.0).to(DOT_DTYPE)
        w_mask = is_k[:, None] & is_col[None, :]
        wg = tl.load(gate_cols + (k0 + ks)[:, None], mask=w_mask, other=0.0).to(DOT_DTYPE)
        wu = tl.load(up_cols + (k0 + ks)[:, None], mask=w_mask, other=0.0).to(DOT_DTYPE)
        acc_gate = tl.dot(a, wg, acc_gate, input_precision=DOT_PRECISION)
        acc_up = tl.dot(a, wu, acc_up, input_precision=DOT_PRECISION)
    dtype = out_ptr.dtype.element_ty
    gate = acc_gate.to(dtype).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(dtype)  # silu, rounded like torch's
    out = act.to(tl.float32) * acc_up.to(dtype).to(tl.float32)
    tl.store(out_ptr + pairs[:, None].to(tl.int64) * stride_o + cols[None, :], out.to(dtype),
             mask=is_pair[:, None] & is_col[None, :])


@jit(do_not_specialize=("num_pairs",))
def _moe_down_kernel(
    act_ptr,  # [num_pairs, INTER]
    w_ptr,  # expert e's [INTER, HIDDEN] matrix at e * stride_we, any strides
    bias_ptr,  # [num_experts, HIDDEN] down bias, read when HAS_BIAS
    weights_ptr,  # [num_pairs] routing weights
    out_ptr,  # [num_pairs, HIDDEN]: weight * down(act) of each pair
    sorted_pairs_ptr,
    block_experts_ptr,
    num_pairs,
    stride_a,
    stride_we,
    stride_wn,  # along HIDDEN
    stride_wk,  # along INTER (1 for Qwen3-MoE's [E, HIDDEN, INTER])
    stride_be,
    stride_o,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Grid: (blocks of sorted pairs, blocks of HIDDEN columns).
    pid_m = tl.program_id(0)
    expert = tl.load(block_experts_ptr + pid_m)
    if expert < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_pairs_ptr + rows)
    is_pair = pairs < num_pairs
    pair_rows = pairs.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    is_col = cols < HIDDEN
    ks = tl.arange(0, BLOCK_K)
    a_rows = act_ptr + pair_rows[:, None] * stride_a
    w_cols = w_ptr + expert.to(tl.int64) * stride_we + cols[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, INTER, BLOCK_K):
        is_k = k0 + ks < INTER
        a = tl.load(a_rows + (k0 + ks)[None, :], mask=is_pair[:, None] & is_k[None, :],
                    other=0.0).to(DOT_DTYPE)
        w = tl.load(w_cols + (k0 + ks)[:, None] * stride_wk,
                    mask=is_k[:, None] & is_col[None, :], other=0.0).to(DOT_DTYPE)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    dtype = out_ptr.dtype.element_ty
    if HAS_BIAS:
        bias = tl.load(bias_ptr + expert.to(tl.int64) * stride_be + cols, mask=is_col,
                       other=0.0)
        acc += bias.to(tl.float32)[None, :]
    weight = tl.load(weights_ptr + pair_rows, mask=is_pair, other=0.0).to(tl.float32)
    out = acc.to(dtype).to(tl.float32) * weight[:, None]
    tl.store(out_ptr + pair_rows[:, None] * stride_o + cols[None, :], out.to(dtype),
             mask=is_pair[:, None] & is_col[None, :])


def moe_blocks(num_pairs: int, num_experts: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K). Few pairs per expert (decode): short row blocks, so
    that padding wastes little; many (prefill): taller blocks reuse each weight tile more.
    Not yet tuned on a GPU."""
    if device.type != "cuda":
        return 16, 32, 32  # the interpreter: small tiles run fastest
    per_expert = num_pairs / num_experts
    if per_expert <= 16:
        return 16, 64, 128
    if per_expert <= 64:
        return 32, 64, 64
    return 64, 128, 64


def fused_moe_triton(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Triton version of `fused_moe_torch` (same arguments); capture-safe."""
    num_tokens, top_k = topk_ids.shape
    num_experts, two_inter, hidden_size = w13.shape
    inter = two_inter // 2
    if w2.shape != (num_experts, hidden_size, inter):
        raise ValueError(f"w2 is {tuple(w2.shape)}, expected {(num_experts, hidden_size, inter)}")
    if not (hidden.is_contiguous() and w13.is_contiguous() and w2.is_contiguous()):
        raise ValueError("fused_moe_triton needs contiguous hidden states and weights")
    out = torch.empty_like(hidden)
    if num_tokens == 0:
        return out
    num_pairs = num_tokens * top_k
    block_m, block_n, block_k = moe_blocks(num_pairs, num_experts, hidden.device)
    aligned = align_pairs_by_expert(topk_ids, num_experts, block_m)
    num_blocks = aligned.block_experts.numel()
    consts = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                  DOT_DTYPE=dot_dtype(hidden.dtype), DOT_PRECISION=dot_precision(hidden.dtype))
    act = torch.empty((num_pairs, inter), dtype=hidden.dtype, device=hidden.device)
    _moe_gate_up_kernel[(num_blocks, cdiv(inter, block_n))](
        hidden, w13, act, aligned.sorted_pairs, aligned.block_experts, num_pairs,
        hidden.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        HIDDEN=hidden_size, INTER=inter, TOP_K=top_k, **consts,
    )
    weights = topk_weights.reshape(-1).to(hidden.dtype)  # rounded as transformers does
    down = torch.empty((num_pairs, hidden_size), dtype=hidden.dtype, device=hidden.device)
    moe_down(act, w2, None, weights, aligned, w2.stride(1), w2.stride(2), down,
             (block_m, block_n, block_k))
    return torch.sum(down.view(num_tokens, top_k, hidden_size), dim=1, out=out)


def moe_down(act: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
             weights: torch.Tensor, aligned: AlignedPairs, stride_wn: int, stride_wk: int,
             out: torch.Tensor, blocks: tuple[int, int, int]) -> torch.Tensor:
    """Launch the down kernel: `out[p] = weights[p] * (act[p] @ W_e + bias_e)` for every
    pair `p` of expert `e`. act: [num_pairs, inter]; w: experts stacked on dim 0, element
    (k along inter, n along hidden) at `k * stride_wk + n * stride_wn`; out:
    [num_pairs, hidden]."""
    num_pairs, inter = act.shape
    hidden_size = out.shape[1]
    block_m, block_n, block_k = blocks
    _moe_down_kernel[(aligned.block_experts.numel(), cdiv(hidden_size, block_n))](
        act, w, bias if bias is not None else w, weights, out, aligned.sorted_pairs,
        aligned.block_experts, num_pairs,
        act.stride(0), w.stride(0), stride_wn, stride_wk,
        bias.stride(0) if bias is not None else 0, out.stride(0),
        HIDDEN=hidden_size, INTER=inter, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        DOT_DTYPE=dot_dtype(act.dtype), DOT_PRECISION=dot_precision(act.dtype),
    )
    return out


def fused_moe(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """The MoE MLP with the fastest kernel for the device: [num_tokens, hidden] out."""
    fn = fused_moe_triton if use_triton(hidden) else fused_moe_torch
    return fn(hidden, w13, w2, topk_weights, topk_ids)
