"""Which model class runs a checkpoint: its config's `model_type` -> Corral's class."""

from __future__ import annotations

from torch import nn

from corral.grammars.param_error import ParamError

from .gpt_oss import GptOssForCausalLM
from .llama import LlamaForCausalLM
from .qwen3_moe import Qwen3MoeForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "llama": LlamaForCausalLM,
    "mistral": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
    "qwen3_moe": Qwen3MoeForCausalLM,
    "gpt_oss": GptOssForCausalLM,
}


def model_class(config) -> type[nn.Module]:
    """The class for `config.model_type`; a `ParamError` naming the supported types else."""
    cls = MODEL_CLASSES.get(config.model_type)
    if cls is None:
        raise ParamError("model", f"architecture {config.model_type!r} is not supported "
                         f"(supported: {', '.join(MODEL_CLASSES)})")
    return cls
