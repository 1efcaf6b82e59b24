"""Build Corral's model from a checkpoint folder: config and weights (fused at load).

Checkpoint names follow the Hugging Face layout (`model.layers.N.self_attn.q_proj.weight`
...). q/k/v are written into slices of the fused `qkv_proj`, gate/up into `gate_up_proj`;
a MoE layer's `mlp.experts.E.{gate,up,down}_proj` into expert E of the stacked `w13`/`w2`
(transformers' in-memory `mlp.experts.{gate_up,down}_proj`, all experts stacked, too).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from corral.grammars.param_error import ParamError

from .attention import AttentionBackend
from .models.llama import LlamaForCausalLM
from .models.registry import model_class
from .tensor_parallel import TensorParallel

logger = logging.getLogger(__name__)

# Named shapes for benchmarks with random weights (as `--load-format dummy`).
SHAPES: dict[str, dict] = {
    "llama3-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        max_position_embeddings=8192, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    ),
    "llama3-70b": dict(
        model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        max_position_embeddings=8192, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    ),
    # A few million parameters: host-side costs (scheduling, grammars, sampling) dominate.
    "llama-tiny": dict(
        model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5,
        max_position_embeddings=8192, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    ),
    # The same few million parameters for Qwen3 (per-head q/k norms) and Qwen3-MoE (16
    # experts, 4 per token): host-side costs, and a quick end-to-end check of both families.
    "qwen3-tiny": dict(
        model_type="qwen3", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6,
        max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
    "qwen3-moe-tiny": dict(
        model_type="qwen3_moe", hidden_size=256, intermediate_size=512,
        moe_intermediate_size=128, num_experts=16, num_experts_per_tok=4,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6,
        max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
    "qwen3-8b": dict(
        model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
        max_position_embeddings=40960, tie_word_embeddings=False, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
    "llama3-1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
        max_position_embeddings=8192, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    ),
    # 128 experts, 8 per token, every layer sparse (intermediate_size: the unused dense width).
    "qwen3-30b-a3b": dict(
        model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144,
        moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6,
        max_position_embeddings=40960, tie_word_embeddings=False, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
    # gpt-oss-20b: 32 experts of width 2880, 4 per token; sliding windows of 128 keys on
    # every other layer, per-head sinks, YaRN rotary (the real config's fields).
    "gpt-oss-20b": dict(
        model_type="gpt_oss", hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
        num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
        num_experts_per_tok=4, sliding_window=128,
        layer_types=["sliding_attention", "full_attention"] * 12, attention_bias=True,
        swiglu_limit=7.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                         "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": 4096},
    ),
}

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)_proj\.(weight|bias)$")
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
# transformers' in-memory stacked experts (Qwen3-MoE): `gate_up_proj [E, 2I, hidden]`, gate
# rows first, and `down_proj [E, hidden, I]`, where checkpoints hold one tensor per expert.
_STACKED_EXPERTS = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up|down)_proj$")


def load_config(model_dir: Path, shape: str | None, vocab_size: int | None):
    """The model config: the checkpoint's, or a named shape over the tokenizer's vocab."""
    from transformers import AutoConfig

    if shape is None:
        return AutoConfig.from_pretrained(model_dir)
    if shape not in SHAPES:
        raise ParamError("shape", f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    fields = dict(SHAPES[shape])
    return AutoConfig.for_model(fields.pop("model_type"), vocab_size=vocab_size, **fields)


def build_model(config, backend: AttentionBackend, max_position: int, dtype: torch.dtype,
                device: torch.device, tp: TensorParallel | None = None) -> LlamaForCausalLM:
    """An uninitialised model of the config's shape (this rank's shard of it) on `device`."""
    with torch.device("meta"):
        model = model_class(config)(config, backend, max_position, tp)
    model = model.to_empty(device=device).to(dtype).eval()
    model.rotary.reset(device)
    return model


def load_weights(model: LlamaForCausalLM, model_dir: Path) -> None:
    """Copy a folder's safetensors weights into the model, fusing q/k/v and gate/up; under
    tensor parallelism only this rank's slice of each tensor is read from disk."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ParamError("model", f"no .safetensors files in {model_dir}")

    def tensors():
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_slice(name)

    load_named_tensors(model, tensors(), str(model_dir))


# How a checkpoint tensor maps onto this rank: (dim, first index, length) of its slice, or
# None for a tensor every rank holds whole.
Shard = tuple[int, int, int] | None
# Where it goes in our parameter: the first row, or (expert, first row) in a stacked one.
Offset = int | tuple[int, int]
_VOCAB_PARAMS = ("embed_tokens.weight", "lm_head.weight")


def load_named_tensors(model: LlamaForCausalLM, tensors: Iterable[tuple[str, Any]],
                       source: str = "state dict") -> None:
    """Copy (checkpoint name, tensor) pairs in the HF layout into the model. A "tensor" may
    be anything sliced like one (a safetensors slice reads only the rows it is asked for)."""
    params = dict(model.named_parameters())
    loaded: dict[str, int] = {}  # parameter -> rows written (of all experts when stacked)
    for name, tensor in _per_expert(model, params, _dequantized(tensors)):
        target, offset, shard = _target_of(model, name)
        if target is None or target not in params:
            continue
        part = _take(tensor, shard)
        dest = params[target].data
        if isinstance(offset, tuple):
            expert, offset = offset
            dest = dest[expert]
        with torch.no_grad():
            dest[offset : offset + part.shape[0]].copy_(part.to(dest.dtype))
            if target in _VOCAB_PARAMS:  # the last rank's padding rows, never read back
                dest[part.shape[0] :].zero_()
        loaded[target] = loaded.get(target, 0) + part.shape[0]
    missing = [n for n in params if n not in loaded
               or (_is_stacked(n) and loaded[n] < params[n].shape[0] * params[n].shape[1])]
    if missing:
        raise ParamError("model", f"{source} lacks weights for {missing[:5]}")


def _dequantized(tensors: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    """The tensors, with each MXFP4 pair (`X_blocks`, `X_scales`) as one float tensor `X`
    once both halves have come (they may sit in different files)."""
    from .mxfp4 import SUFFIXES, expert_matrix

    halves: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors:
        suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            yield name, tensor
            continue
        base = name[: -len(suffix)]
        pair = halves.setdefault(base, {})
        pair[suffix] = torch.as_tensor(tensor[:])
        if len(pair) == 2:
            del halves[base]
            yield base, expert_matrix(pair["_blocks"], pair["_scales"])
    if halves:
        raise ParamError("model", f"MXFP4 tensors without their other half: {sorted(halves)}")


def _per_expert(model: LlamaForCausalLM, params: dict[str, torch.nn.Parameter],
                tensors: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    """The tensors, with transformers' stacked experts (a Qwen3-MoE model's `state_dict()`
    in memory) as the checkpoint's one tensor per expert projection (views, no copies).
    A model whose own parameters carry those names (gpt-oss) gets them as they are."""
    for name, tensor in tensors:
        m = _STACKED_EXPERTS.match(name)
        experts = None if m is None else getattr(model.layers[int(m[1])].mlp, "experts", None)
        if m is None or name[len("model."):] in params or not hasattr(experts, "w13"):
            yield name, tensor
            continue
        stacked = torch.as_tensor(tensor[:])
        hidden, inter = experts.w2.shape[1], experts.intermediate_size * model.tp.size
        gate_up = m[2] == "gate_up"
        expected = (experts.num_experts, 2 * inter, hidden) if gate_up else (
            experts.num_experts, hidden, inter)
        if tuple(stacked.shape) != expected:
            raise ParamError("model", f"{name} has shape {tuple(stacked.shape)}, expected "
                             f"{expected}")
        prefix = f"model.layers.{m[1]}.mlp.experts."
        for expert, weights in enumerate(stacked):
            if gate_up:
                yield f"{prefix}{expert}.gate_proj.weight", weights[:inter]
                yield f"{prefix}{expert}.up_proj.weight", weights[inter:]
            else:
                yield f"{prefix}{expert}.down_proj.weight", weights


def _is_stacked(param_name: str) -> bool:
    return param_name.endswith((".experts.w13", ".experts.w2"))


def _take(tensor: Any, shard: Shard) -> torch.Tensor:
    if shard is None:
        return torch.as_tensor(tensor[:])
    dim, first, length = shard
    if dim == 0:
        return torch.as_tensor(tensor[first : first + length])
    return torch.as_tensor(tensor[:, first : first + length])


def _target_of(model: LlamaForCausalLM, name: str) -> tuple[str | None, Offset, Shard]:
    """Map a checkpoint tensor name to (our parameter name, where it goes in it, the slice
    of the checkpoint tensor this rank holds)."""
    vocab_first, vocab_rows = model.first_vocab_row, model.embed_tokens.num_embeddings
    vocab_shard = (0, vocab_first, max(min(vocab_rows, model.vocab_size - vocab_first), 0))
    if name.startswith("lm_head.") and model.tie_word_embeddings:
        return None, 0, None
    if name == "lm_head.weight":
        return "lm_head.weight", 0, vocab_shard
    if name == "model.embed_tokens.weight":
        return "embed_tokens.weight", 0, vocab_shard
    if name.startswith("model.norm."):
        return name[len("model."):], 0, None
    m = _EXPERT.match(name)
    if m is not None:
        return _expert_target(model, int(m[1]), int(m[2]), m[3])
    m = _LAYER.match(name)
    if m is None:
        if name.startswith("model.layers.") and "rotary_emb" not in name:
            return name[len("model."):], 0, None
        return None, 0, None
    layer, block, proj, kind = int(m[1]), m[2], m[3], m[4]
    prefix = f"layers.{layer}.{block}."
    attn = model.layers[layer].self_attn
    mlp = model.layers[layer].mlp
    rank = model.tp.rank
    if proj == "q":
        return f"{prefix}qkv_proj.{kind}", 0, (0, rank * attn.q_size, attn.q_size)
    if proj in ("k", "v"):
        offset = attn.q_size + (0 if proj == "k" else attn.kv_size)
        shard = (0, attn.first_kv_head * attn.head_dim, attn.kv_size)
        return f"{prefix}qkv_proj.{kind}", offset, shard
    if proj in ("gate", "up"):
        offset = 0 if proj == "gate" else mlp.intermediate_size
        shard = (0, rank * mlp.intermediate_size, mlp.intermediate_size)
        return f"{prefix}gate_up_proj.{kind}", offset, shard
    if proj == "o":  # its bias (gpt-oss) is whole: one rank only
        shard = None if kind == "bias" else (1, rank * attn.q_size, attn.q_size)
        return f"{prefix}o_proj.{kind}", 0, shard
    if proj == "down":
        shard = (1, rank * mlp.intermediate_size, mlp.intermediate_size)
        return f"{prefix}down_proj.{kind}", 0, shard
    return f"{prefix}{proj}_proj.{kind}", 0, None


def _expert_target(model: LlamaForCausalLM, layer: int, expert: int,
                   proj: str) -> tuple[str, Offset, Shard]:
    """Expert `expert`'s gate/up rows (into w13) or down columns (into w2), this rank's
    intermediate channels of them."""
    experts = model.layers[layer].mlp.experts
    inter = experts.intermediate_size
    prefix = f"layers.{layer}.mlp.experts."
    if proj == "down":
        return prefix + "w2", (expert, 0), (1, model.tp.rank * inter, inter)
    offset = 0 if proj == "gate" else inter
    return prefix + "w13", (expert, offset), (0, model.tp.rank * inter, inter)
