"""Qwen3-MoE: Qwen3's attention (per-head q/k norms) with a sparse mixture-of-experts MLP.

A linear router scores the experts, softmax turns the scores into probabilities (float32),
each token keeps its `num_experts_per_tok` best experts, with their probabilities
renormalised to sum to one when `norm_topk_prob` is set, and gets the weighted sum of those
experts' SwiGLU MLPs (`kernels/fused_moe`). Layers listed in `mlp_only_layers`, and those
off the `decoder_sparse_step` stride, keep a dense MLP of `intermediate_size`.

Expert weights are stacked, gate and up fused at load: `w13 [num_experts, 2 * I, hidden]`,
`w2 [num_experts, hidden, I]`. Under tensor parallelism each rank holds its slice of every
expert's intermediate channels (I = moe_intermediate_size / ranks) and all-reduces after
the down projection; the router is replicated, so every rank routes alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corral.kernels.fused_moe import fused_moe

from ..tensor_parallel import TensorParallel
from .llama import MLP, LlamaForCausalLM


def route(router_logits: torch.Tensor, top_k: int,
          renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, num_experts] scores -> (weights [T, top_k] in the scores' dtype, expert ids
    [T, top_k] int64), the best expert first."""
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(router_logits.dtype), ids


class FusedExperts(nn.Module):
    """`num_experts` SwiGLU MLPs stacked into two tensors; this rank's channels of each."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int,
                 tp: TensorParallel):
        super().__init__()
        self.num_experts = num_experts
        self.intermediate_size = tp.split(intermediate_size, "MoE intermediate size")
        inter = self.intermediate_size
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * inter, hidden_size))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, inter))
        self.tp = tp

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        """x: [T, hidden]; topk_*: [T, top_k] -> [T, hidden], summed over the ranks."""
        return self.tp.all_reduce(fused_moe(x, self.w13, self.w2, topk_weights, topk_ids))


class SparseMoeBlock(nn.Module):
    """Router plus experts: the MLP of a sparse layer."""

    def __init__(self, config, tp: TensorParallel):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.renormalize = bool(config.norm_topk_prob)
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = FusedExperts(config.num_experts, config.hidden_size,
                                    config.moe_intermediate_size, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = route(self.gate(x), self.top_k, self.renormalize)
        return self.experts(x, weights, ids)


def is_sparse_layer(config, layer_idx: int) -> bool:
    """Whether layer `layer_idx` has experts (transformers' rule for Qwen3-MoE)."""
    step = getattr(config, "decoder_sparse_step", 1) or 1
    return (layer_idx not in (getattr(config, "mlp_only_layers", None) or [])
            and config.num_experts > 0 and (layer_idx + 1) % step == 0)


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    """Qwen3-MoE (e.g. Qwen3-30B-A3B, Qwen3-Coder-30B-A3B)."""

    def make_mlp(self, config, layer_idx: int, tp: TensorParallel) -> nn.Module:
        if is_sparse_layer(config, layer_idx):
            return SparseMoeBlock(config, tp)
        return MLP(config, tp)
