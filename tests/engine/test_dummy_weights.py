"""Dummy weights are the same model at every tensor-parallel size: each rank's shard is
its slice of the one-rank model's tensors (built here without process groups)."""

from __future__ import annotations

import torch

from corral.engine.attention import TorchAttentionBackend
from corral.engine.dummy_weights import draw_tensor, init_dummy_weights
from corral.engine.model_loader import build_model, load_config
from corral.engine.tensor_parallel import TensorParallel


def _model(tp: TensorParallel, seed: int = 0):
    config = load_config(None, "llama-tiny", 1000)
    model = build_model(config, TorchAttentionBackend(), 128, torch.float32,
                        torch.device("cpu"), tp)
    init_dummy_weights(model, seed)
    return model


def test_shards_are_slices_of_the_one_rank_model():
    whole = dict(_model(TensorParallel()).named_parameters())
    shards = [dict(_model(TensorParallel(rank, 2)).named_parameters()) for rank in range(2)]
    for name in ("layers.0.mlp.down_proj.weight", "layers.1.self_attn.o_proj.weight"):
        assert torch.equal(torch.cat([s[name] for s in shards], dim=1), whole[name])
    embed = torch.cat([s["embed_tokens.weight"] for s in shards])[:1000]
    assert torch.equal(embed, whole["embed_tokens.weight"])
    gate_up = whole["layers.0.mlp.gate_up_proj.weight"]  # [gate; up], each split by rows
    gate, up = gate_up.chunk(2)
    local = [s["layers.0.mlp.gate_up_proj.weight"].chunk(2) for s in shards]
    assert torch.equal(torch.cat([g for g, _ in local]), gate)
    assert torch.equal(torch.cat([u for _, u in local]), up)
    assert torch.equal(shards[1]["norm.weight"], torch.ones_like(whole["norm.weight"]))


def test_draws_depend_on_seed_and_name_only():
    shape, cpu = torch.Size([4, 8]), torch.device("cpu")
    a = draw_tensor("model.layers.0.mlp.up_proj.weight", shape, 0, torch.float32, cpu)
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(a, draw_tensor("model.layers.0.mlp.up_proj.weight", shape, 0,
                                      torch.float32, cpu))
    assert not torch.equal(a, draw_tensor("model.layers.1.mlp.up_proj.weight", shape, 0,
                                          torch.float32, cpu))
    assert not torch.equal(a, draw_tensor("model.layers.0.mlp.up_proj.weight", shape, 1,
                                          torch.float32, cpu))
    assert 0.01 < a.std().item() < 0.04
