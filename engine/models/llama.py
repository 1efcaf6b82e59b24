"""Decoder-only transformers of the Llama family: Llama, Mistral, Qwen2 and Qwen3 (dense).

One parametrised implementation: fused QKV and gate-up projections (fused at load time),
rotary embeddings (incl. Llama-3 rope scaling), RMSNorm, grouped-query attention, optional
QKV bias (Qwen2), per-head RMSNorm of queries and keys before the rotation (Qwen3) and tied
embeddings. Attention reads and writes the paged KV cache through
an attention backend; the batch is flattened (`[num_tokens, ...]`), no padding.

Under tensor parallelism (`TensorParallel`) each rank holds its heads, its intermediate
channels and its vocabulary rows; o and down projections and the embedding end in an
all-reduce, the LM head in an all-gather. Sizes below are this rank's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corral.kernels.rms_norm import rms_norm
from corral.kernels.rotary_embedding import rotary_embedding
from corral.kernels.silu_and_mul import silu_and_mul

from ..attention import AttentionBackend, AttentionMetadata
from ..tensor_parallel import TensorParallel
from .rotary import RotaryEmbedding

QK_NORM_ARCHITECTURES = {"qwen3", "qwen3_moe"}  # RMSNorm over each head of q and k


class RMSNorm(nn.Module):
    """RMSNorm, optionally fused with the residual add before it (Triton on GPU)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Returns norm(x), or (norm(x + residual), x + residual)."""
        return rms_norm(x, self.weight, self.eps, residual)


class Attention(nn.Module):
    def __init__(self, config, layer_idx: int, rotary: RotaryEmbedding,
                 backend: AttentionBackend, tp: TensorParallel):
        super().__init__()
        total_heads = config.num_attention_heads
        total_kv_heads = getattr(config, "num_key_value_heads", None) or total_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // total_heads
        self.num_heads = tp.split(total_heads, "attention heads")
        self.first_kv_head, self.num_kv_heads = tp.kv_heads(total_kv_heads)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.scale = self.head_dim**-0.5
        self.has_qk_norm = config.model_type in QK_NORM_ARCHITECTURES
        if self.has_qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.layer_idx = layer_idx
        self.rotary = rotary
        self.backend = backend
        self.tp = tp

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                kv_cache: tuple[torch.Tensor, torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)  # [T, q + 2kv]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.has_qk_norm:  # [T * heads, head_dim] rows, normalised one head at a time
            q = self.q_norm(q.reshape(-1, self.head_dim)).view(-1, self.num_heads, self.head_dim)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view(-1, self.num_kv_heads,
                                                                self.head_dim)
        q, k = rotary_embedding(positions, q, k, self.rotary.cos, self.rotary.sin)
        out = self.backend.forward(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale)
        return self.tp.all_reduce(self.o_proj(out.reshape(-1, self.q_size)))


class MLP(nn.Module):
    def __init__(self, config, tp: TensorParallel):
        super().__init__()
        self.intermediate_size = tp.split(config.intermediate_size, "intermediate size")
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=False)
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(self.down_proj(silu_and_mul(self.gate_up_proj(x))))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, rotary: RotaryEmbedding,
                 backend: AttentionBackend, tp: TensorParallel, mlp: nn.Module,
                 attention: nn.Module | None = None):
        super().__init__()
        self.self_attn = attention or Attention(config, layer_idx, rotary, backend, tp)
        self.mlp = mlp  # [T, hidden] -> [T, hidden], all-reduced
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None, kv_cache: tuple[torch.Tensor, torch.Tensor],
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's output, residual stream); their sum is the layer's result."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaForCausalLM(nn.Module):
    """The model: token ids and positions of a flattened batch in, hidden states out.

    Subclasses change a layer's MLP through `make_mlp` (Qwen3-MoE's sparse experts) and its
    attention through `make_attention` (gpt-oss's sinks and windows)."""

    def __init__(self, config, backend: AttentionBackend, max_position: int,
                 tp: TensorParallel | None = None):
        super().__init__()
        tp = tp or TensorParallel()
        self.config = config
        self.vocab_size = config.vocab_size
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        self.rotary = RotaryEmbedding(config, head_dim, max_position)
        self.tp = tp
        self.first_vocab_row, vocab_rows = tp.vocab_rows(config.vocab_size)
        self.embed_tokens = nn.Embedding(vocab_rows, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, self.rotary, backend, tp, self.make_mlp(config, i, tp),
                         self.make_attention(config, i, self.rotary, backend, tp))
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if not self.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, vocab_rows, bias=False)

    def make_mlp(self, config, layer_idx: int, tp: TensorParallel) -> nn.Module:
        """Layer `layer_idx`'s MLP: the dense SwiGLU."""
        return MLP(config, tp)

    def make_attention(self, config, layer_idx: int, rotary: RotaryEmbedding,
                       backend: AttentionBackend, tp: TensorParallel) -> nn.Module | None:
        """Layer `layer_idx`'s attention (None: the Llama one)."""
        return None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [num_tokens]; returns hidden states [num_tokens, hidden]."""
        hidden = self.embed(input_ids)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, kv_cache, meta)
        return self.norm(hidden, residual)[0]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[num_tokens] -> [num_tokens, hidden]; each rank looks up the ids in its rows."""
        if not self.tp.enabled:
            return self.embed_tokens(input_ids)
        local = input_ids - self.first_vocab_row
        mine = (local >= 0) & (local < self.embed_tokens.num_embeddings)
        hidden = self.embed_tokens(local.clamp(0, self.embed_tokens.num_embeddings - 1))
        return self.tp.all_reduce(hidden * mine.unsqueeze(-1).to(hidden.dtype))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[num_rows, hidden] -> float32 logits [num_rows, vocab] (on every rank)."""
        weight = self.embed_tokens.weight if self.tie_word_embeddings else self.lm_head.weight
        logits = self.tp.gather_vocab(F.linear(hidden, weight), self.vocab_size)
        return logits.float()
