"""Qwen3-MoE on tiny random checkpoints: logits equal transformers' forward through prefill
and paged decode steps, greedy tokens through `LLM` equal transformers' `generate`, and two
tensor-parallel ranks give one rank's greedy tokens (float32, CPU)."""

from __future__ import annotations

import pytest
import torch

from corral.engine import LLM, SamplingParams
from corral.engine.config import EngineConfig
from corral.engine.model_loader import build_model, load_config, load_named_tensors
from corral.engine.model_runner import ModelRunner
from corral.engine.models.qwen3_moe import SparseMoeBlock
from corral.grammars.param_error import ParamError
from tests.engine.test_model_families import meta_for

# 8 experts, 2 per token; layer 0 dense (mlp_only_layers), layers 1-2 sparse.
TINY = dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            num_experts=8, num_experts_per_tok=2, mlp_only_layers=[0],
            max_position_embeddings=512, rms_norm_eps=1e-6)


def make_checkpoint(path, vocab_size: int, std: float = 0.02, **overrides):
    """A random Qwen3MoeForCausalLM saved in the Hugging Face layout (one tensor per
    expert projection); returns the transformers model."""
    import transformers

    config = transformers.Qwen3MoeConfig(vocab_size=vocab_size, **{**TINY, **overrides})
    torch.manual_seed(0)
    model = transformers.Qwen3MoeForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):  # routes that differ token by token
                param.normal_(0, 1.0)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                param.normal_(1, 0.5)
            elif param.dim() >= 2:
                param.normal_(0, std)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("overrides", [
    {},  # norm_topk_prob off (the config's default)
    {"norm_topk_prob": True, "tie_word_embeddings": True},
    {"mlp_only_layers": [], "decoder_sparse_step": 2},  # layer 1 sparse, layers 0 and 2 dense
])
def test_logits_match_transformers(tmp_path, overrides):
    reference = make_checkpoint(tmp_path, vocab_size=256, **overrides)
    runner = ModelRunner(EngineConfig(model=str(tmp_path), num_blocks=16, block_size=8,
                                      dtype="float32"),
                         tmp_path, None, None)
    runner.allocate_kv_cache()
    sparse = [isinstance(layer.mlp, SparseMoeBlock) for layer in runner.model.layers]
    assert sparse == [type(layer.mlp).__name__ == "Qwen3MoeSparseMoeBlock"
                      for layer in reference.model.layers]
    assert any(sparse) and not all(sparse)
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (30,))
    with torch.inference_mode():
        expected = reference(ids.unsqueeze(0)).logits[0]  # [30, vocab]
        block_table = [3, 7, 1, 12]
        got = []
        done = 0
        for n in [12, 8] + [1] * 10:  # two prefill chunks, then paged decode steps
            positions, meta = meta_for(done, n, block_table, 8)
            hidden = runner.model(ids[done : done + n], positions, runner.kv_caches, meta)
            got.append(runner.model.compute_logits(hidden))
            done += n
    torch.testing.assert_close(torch.cat(got), expected, rtol=1e-4, atol=1e-4)


def greedy(path, tokenizer_dir, prompts, tokens: int, **engine_args) -> list[list[int]]:
    with LLM(str(path), tokenizer=str(tokenizer_dir), dtype="float32", device="cpu",
             num_blocks=64, max_model_len=256, **engine_args) as llm:
        outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=tokens,
                                                       ignore_eos=True))
    return [out.outputs[0].token_ids for out in outputs]


PROMPTS = [[1, 2, 3, 4, 5], list(range(100, 160)), [7] * 33]


def test_greedy_tokens_match_transformers(tmp_path, model_dir):
    """Served by `LLM` with the embedded model's tokenizer (the vocabulary is its size)."""
    import transformers

    vocab_size = len(transformers.AutoTokenizer.from_pretrained(model_dir))
    model = make_checkpoint(tmp_path, vocab_size, std=0.2, norm_topk_prob=True)
    got = greedy(tmp_path, model_dir, PROMPTS, tokens=12)
    for prompt, tokens in zip(PROMPTS, got, strict=True):
        with torch.inference_mode():
            expected = model.generate(torch.tensor([prompt]), max_new_tokens=12,
                                      do_sample=False, eos_token_id=None,
                                      pad_token_id=0)[0, len(prompt):]
        assert tokens == expected.tolist()


def test_two_ranks_match_one(tmp_path, model_dir):
    """Each expert's intermediate channels split over 2 gloo ranks; router replicated."""
    make_checkpoint(tmp_path, vocab_size=49155, std=0.2, norm_topk_prob=True)
    expected = greedy(tmp_path, model_dir, PROMPTS, tokens=16)
    got = greedy(tmp_path, model_dir, PROMPTS, tokens=16, tensor_parallel_size=2)
    assert got == expected
    assert all(len(tokens) == 16 for tokens in got)


def test_loader_refuses_a_missing_expert(tmp_path):
    """Every expert of a stacked parameter must come from the checkpoint."""
    from corral.engine.attention import TorchAttentionBackend

    reference = make_checkpoint(tmp_path, vocab_size=256)
    config = load_config(tmp_path, None, None)
    model = build_model(config, TorchAttentionBackend(), 64, torch.float32,
                        torch.device("cpu"))
    state = {name: tensor for name, tensor in _hf_layout(reference).items()
             if ".experts.5.up_proj" not in name}
    with pytest.raises(ParamError, match="experts.w13"):
        load_named_tensors(model, state.items())


def _hf_layout(model) -> dict[str, torch.Tensor]:
    """The checkpoint names save_pretrained writes: one tensor per expert projection."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            for e, fused in enumerate(tensor):
                gate, up = fused.chunk(2)
                state[f"{prefix}{e}.gate_proj.weight"] = gate
                state[f"{prefix}{e}.up_proj.weight"] = up
        elif name.endswith("experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e, down in enumerate(tensor):
                state[f"{prefix}{e}.down_proj.weight"] = down
        else:
            state[name] = tensor
    return state


def test_dummy_shape_qwen3_30b_a3b():
    """The named shape builds (on the meta device) with Qwen3-30B-A3B's parameter count."""
    from corral.engine.attention import TorchAttentionBackend

    config = load_config(None, "qwen3-30b-a3b", vocab_size=151936)
    model = build_model(config, TorchAttentionBackend(), 4096, torch.bfloat16,
                        torch.device("meta"))
    assert all(isinstance(layer.mlp, SparseMoeBlock) for layer in model.layers)
    experts = model.layers[0].mlp.experts
    assert experts.w13.shape == (128, 2 * 768, 2048) and experts.w2.shape == (128, 2048, 768)
    total = sum(p.numel() for p in model.parameters())
    assert 30.0e9 < total < 30.7e9  # "30B" total (about 3B active)


@pytest.mark.parametrize("tensor_parallel_rank", [None, 1])
def test_loader_takes_transformers_stacked_experts(tmp_path, tensor_parallel_rank):
    """transformers' in-memory `state_dict()` (experts stacked: `gate_up_proj [E, 2I, H]`,
    `down_proj [E, H, I]`) loads into the same parameters as the per-expert checkpoint
    names, whole and as rank 1 of 2's slice of each expert's channels."""
    from corral.engine.attention import TorchAttentionBackend
    from corral.engine.tensor_parallel import TensorParallel

    reference = make_checkpoint(tmp_path, vocab_size=256)
    config = load_config(tmp_path, None, None)
    tp = None if tensor_parallel_rank is None else TensorParallel(rank=tensor_parallel_rank,
                                                                  size=2)
    stacked, per_expert = (build_model(config, TorchAttentionBackend(), 64, torch.float32,
                                       torch.device("cpu"), tp) for _ in range(2))
    assert any(name.endswith("experts.gate_up_proj") for name in reference.state_dict())
    load_named_tensors(stacked, reference.state_dict().items())
    load_named_tensors(per_expert, _hf_layout(reference).items())
    theirs = dict(per_expert.named_parameters())
    for name, param in stacked.named_parameters():
        torch.testing.assert_close(param, theirs[name], rtol=0, atol=0)


def test_loader_refuses_stacked_experts_of_the_wrong_shape(tmp_path):
    from corral.engine.attention import TorchAttentionBackend

    reference = make_checkpoint(tmp_path, vocab_size=256, moe_intermediate_size=16)
    config = load_config(tmp_path, None, None)
    model = build_model(config, TorchAttentionBackend(), 64, torch.float32, torch.device("cpu"))
    state = dict(reference.state_dict())
    name = "model.layers.1.mlp.experts.gate_up_proj"
    state[name] = state[name].transpose(1, 2)  # [E, H, 2I]: gpt-oss's layout, not Qwen3-MoE's
    with pytest.raises(ParamError, match="gate_up_proj has shape"):
        load_named_tensors(model, state.items())
