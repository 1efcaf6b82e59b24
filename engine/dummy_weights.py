"""Random ("dummy") weights for benchmarks: the same model at every tensor-parallel size.

Every tensor of the checkpoint the config describes (transformers' names and in-memory
layout for its `model_type`) is drawn whole, on the model's device and in its dtype, from a
generator seeded by the run's seed and the tensor's name; the checkpoint loader then keeps
this rank's slice of it. So a model split N ways holds exactly the slices of the one-rank
model, and greedy outputs at any split can be compared with one rank's. Norm weights are
ones, everything else normal(0, 0.02).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import torch

from .model_loader import load_named_tensors
from .models.llama import LlamaForCausalLM


def checkpoint_shapes(config) -> list[tuple[str, torch.Size]]:
    """(name, shape) of each tensor of transformers' model for `config`, built on the meta
    device (no memory, no init)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(config)
    return [(name, tensor.shape) for name, tensor in reference.state_dict().items()]


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight") or "layernorm" in name


def draw_tensor(name: str, shape: torch.Size, seed: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """The whole tensor `name`: the same values for a given (seed, name, shape, dtype,
    device) in every process."""
    if _is_norm(name):
        return torch.ones(shape, dtype=dtype, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    tensor = torch.empty(shape, dtype=dtype, device=device)
    return tensor.normal_(0.0, 0.02, generator=generator)


def init_dummy_weights(model: LlamaForCausalLM, seed: int) -> None:
    """Fill the model (this rank's shard) with the seeded random checkpoint's slices; one
    whole tensor is alive at a time."""
    param = next(model.parameters())

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name, shape in checkpoint_shapes(model.config):
            yield name, draw_tensor(name, shape, seed, param.dtype, param.device)

    load_named_tensors(model, tensors(), "dummy checkpoint")
