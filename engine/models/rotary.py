"""Rotary position embeddings (non-interleaved halves, as Llama checkpoints in HF layout use).

The inverse frequencies come from transformers' rope initialisers for scaled variants
(llama3, linear, yarn, ...) so that every scaling rule matches the reference exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from corral.grammars.param_error import ParamError


def rope_parameters(config) -> dict:
    """The model's rope settings in one dict (transformers 5 and 4 spell them differently)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        return dict(params)
    params = dict(getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def inverse_frequencies(config, head_dim: int) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim // 2], attention scaling)."""
    params = rope_parameters(config)
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        theta = float(params.get("rope_theta", 10000.0))
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        return (1.0 / theta**exponents).float(), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS or rope_type == "dynamic":
        raise ParamError("model", f"rope scaling {rope_type!r} is not supported")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


class RotaryEmbedding(nn.Module):
    """The cos/sin tables of rotary embeddings by position (applied by
    `corral.kernels.rotary_embedding`). `reset(device)` computes them once the model is on
    its device."""

    def __init__(self, config, head_dim: int, max_position: int):
        super().__init__()
        self.config = config
        self.head_dim = head_dim
        self.max_position = max_position
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    def reset(self, device: torch.device) -> None:
        """(Re)compute the float32 cos/sin tables `[max_position, head_dim // 2]` on `device`."""
        inv_freq, scaling = inverse_frequencies(self.config, self.head_dim)
        positions = torch.arange(self.max_position, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        self.cos = (freqs.cos() * scaling).to(device)
        self.sin = (freqs.sin() * scaling).to(device)
