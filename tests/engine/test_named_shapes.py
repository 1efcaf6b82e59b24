"""Every named shape for random-weight benchmarks builds, on the meta device (no memory),
both as Corral's model and as transformers' own class for its `model_type`; every tensor of
transformers' `state_dict()` (its in-memory layout: Qwen3-MoE's experts stacked) lands in
one of Corral's parameters and fills it, as the throughput benchmark's hand-over needs."""

from __future__ import annotations

import pytest
import torch

from corral.engine.attention import TorchAttentionBackend
from corral.engine.model_loader import SHAPES, _per_expert, _target_of, build_model, load_config

CLASSES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "qwen3_moe": "Qwen3MoeForCausalLM", "gpt_oss": "GptOssForCausalLM"}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_transformers_state_dict_fills_every_parameter(shape):
    from transformers import AutoModelForCausalLM

    config = load_config(None, shape, vocab_size=1000)
    ours = build_model(config, TorchAttentionBackend(), 256, torch.bfloat16,
                       torch.device("meta"))
    with torch.device("meta"):
        theirs = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    assert type(theirs).__name__ == CLASSES[SHAPES[shape]["model_type"]]
    params = dict(ours.named_parameters())
    rows: dict[str, int] = {}
    for name, tensor in _per_expert(ours, params, theirs.state_dict().items()):
        target, _, _ = _target_of(ours, name)
        if target is None:
            continue
        assert target in params, name
        stacked = target.endswith((".w13", ".w2"))
        assert tensor.shape[1:] == params[target].shape[2 if stacked else 1:], name
        rows[target] = rows.get(target, 0) + tensor.shape[0]
    expected = {name: p.shape[0] * (p.shape[1] if name.endswith((".w13", ".w2")) else 1)
                for name, p in params.items()}
    assert rows == expected
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in theirs.parameters())
