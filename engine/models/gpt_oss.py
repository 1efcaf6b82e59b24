"""gpt-oss: attention with sinks on alternating sliding-window and full layers, and a
mixture of experts with a clamped SwiGLU and biases everywhere.

- Attention: q/k/v/o with biases, YaRN rotary embeddings, one learned sink logit per head
  (`sinks`, see `engine/sink_attention.py`), and a sliding window of `sliding_window` keys
  on the layers `layer_types` marks "sliding_attention".
- MLP: a linear router with bias; each token keeps its `num_experts_per_tok` best experts
  and softmaxes their logits; an expert computes `gate_up = x @ W + b` with gate and up
  interleaved (even, odd channels), `gate = min(gate, limit)`, `up = clamp(up, +-limit)`,
  `(up + 1) * gate * sigmoid(alpha * gate)`, then its down projection with bias.

Expert tensors keep the checkpoint's layout: `gate_up_proj [E, hidden, 2I]`,
`down_proj [E, I, hidden]` (MXFP4 checkpoints are dequantized to it at load).

On a GPU attention runs in the Triton backend's kernels with `sinks` and `window`
(`kernels/triton_attention.py`) and the experts in one grouped kernel
(`kernels/clamped_swiglu_moe.py`): no host sync, so decode steps run in CUDA graphs. On the
CPU (or with the torch attention backend) attention takes the torch sink path
(`engine/sink_attention.py`) and the experts run one by one. One rank for now.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corral.grammars.param_error import ParamError
from corral.kernels import clamped_swiglu_moe as moe
from corral.kernels.rotary_embedding import rotary_embedding

from ..attention import AttentionMetadata
from ..sink_attention import SinkAttentionBackend
from ..tensor_parallel import TensorParallel
from .llama import Attention, LlamaForCausalLM
from .rotary import RotaryEmbedding


class SinkAttention(Attention):
    """Llama attention with an output bias, per-head sinks and an optional window.

    Runs on the model's backend when that takes sinks (`supports_sinks`: the Triton one),
    else on the torch sink path."""

    def __init__(self, config, layer_idx: int, rotary: RotaryEmbedding, backend,
                 tp: TensorParallel):
        if not getattr(backend, "supports_sinks", False):
            backend = SinkAttentionBackend()
        super().__init__(config, layer_idx, rotary, backend, tp)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=True)
        self.sinks = nn.Parameter(torch.empty(self.num_heads))
        layer_types = getattr(config, "layer_types", None) or []
        sliding = layer_idx < len(layer_types) and layer_types[layer_idx] == "sliding_attention"
        self.window = config.sliding_window if sliding else None

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                kv_cache: tuple[torch.Tensor, torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)  # [T, q + 2kv]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        q, k = rotary_embedding(positions, q, k, self.rotary.cos, self.rotary.sin)
        out = self.backend.forward(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale,
                                   sinks=self.sinks, window=self.window)
        return self.o_proj(out.reshape(-1, self.q_size))


class ClampedSwiGLUExperts(nn.Module):
    """`num_experts` MLPs in the checkpoint's stacked layout (`kernels/clamped_swiglu_moe`:
    one grouped kernel on a GPU, one expert at a time in torch elsewhere)."""

    def __init__(self, config):
        super().__init__()
        experts, hidden, inter = (config.num_local_experts, config.hidden_size,
                                  config.intermediate_size)
        self.gate_up_proj = nn.Parameter(torch.empty(experts, hidden, 2 * inter))
        self.gate_up_proj_bias = nn.Parameter(torch.empty(experts, 2 * inter))
        self.down_proj = nn.Parameter(torch.empty(experts, inter, hidden))
        self.down_proj_bias = nn.Parameter(torch.empty(experts, hidden))
        self.alpha = float(getattr(config, "swiglu_alpha", 1.702))
        self.limit = float(getattr(config, "swiglu_limit", 7.0))

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
        """x: [T, hidden]; weights, ids: [T, top_k] -> [T, hidden]."""
        return moe.clamped_swiglu_moe(
            x.contiguous(), self.gate_up_proj, self.gate_up_proj_bias, self.down_proj,
            self.down_proj_bias, weights, ids, self.alpha, self.limit)


class RoutedExperts(nn.Module):
    """Router plus experts: each token's top-k experts, weighted by the softmax of their
    logits."""

    def __init__(self, config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, config.num_local_experts, bias=True)
        self.experts = ClampedSwiGLUExperts(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, ids = F.linear(x, self.router.weight, self.router.bias).topk(self.top_k, dim=-1)
        weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(x.dtype)
        return self.experts(x, weights, ids)


class GptOssForCausalLM(LlamaForCausalLM):
    """gpt-oss (gpt-oss-20b, gpt-oss-120b)."""

    def __init__(self, config, backend, max_position: int, tp: TensorParallel | None = None):
        if tp is not None and tp.enabled:
            raise ParamError("tensor_parallel_size", "gpt-oss runs on one rank for now")
        super().__init__(config, backend, max_position, tp)

    def make_mlp(self, config, layer_idx: int, tp: TensorParallel) -> nn.Module:
        return RoutedExperts(config)

    def make_attention(self, config, layer_idx: int, rotary: RotaryEmbedding, backend,
                       tp: TensorParallel) -> nn.Module:
        return SinkAttention(config, layer_idx, rotary, backend, tp)
