"""Tensor parallelism on CPU ranks joined by gloo: a tiny random checkpoint split 2 and 4
ways gives the same greedy tokens as one rank (float32), and splits that cannot work are
refused at start, naming the field."""

from __future__ import annotations

import pytest
import torch

from corral.engine import LLM, SamplingParams
from corral.engine.config import EngineConfig
from corral.engine.tensor_parallel import TensorParallel, check_tensor_parallel
from corral.grammars.param_error import ParamError

TOKENS = 20


def make_checkpoint(path, family: str, vocab_size: int, tie: bool) -> None:
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[family]
    config = config_cls(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=512, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():  # sharper logits than the init's: greedy ties would be luck
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.2)
            elif family == "qwen2":  # q/k/v biases
                param.normal_(0, 0.5)
    model.save_pretrained(path)


def greedy(path, tokenizer_dir, prompts, **engine_args) -> list[list[int]]:
    with LLM(str(path), tokenizer=str(tokenizer_dir), dtype="float32", device="cpu",
             num_blocks=64, max_model_len=256, **engine_args) as llm:
        outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=TOKENS,
                                                       ignore_eos=True))
    return [out.outputs[0].token_ids for out in outputs]


PROMPTS = [[1, 2, 3, 4, 5], list(range(100, 160)), [7] * 33]


@pytest.mark.parametrize("family,size,tie", [
    ("llama", 2, False),  # 2 KV heads split 2 ways
    ("qwen2", 2, True),  # q/k/v biases sharded with their rows; tied vocabulary-parallel head
    ("qwen3", 4, False),  # 4 ranks over 2 KV heads: replicated; per-head q/k norms
])
def test_greedy_tokens_match_one_rank(tmp_path, model_dir, family, size, tie):
    # A vocabulary that no rank count divides: the last shard is padded.
    make_checkpoint(tmp_path, family, vocab_size=49155, tie=tie)
    expected = greedy(tmp_path, model_dir, PROMPTS)
    got = greedy(tmp_path, model_dir, PROMPTS, tensor_parallel_size=size)
    assert got == expected
    assert all(len(tokens) == TOKENS for tokens in got)


def test_ranks_on_two_nodes_meet_at_the_master(tmp_path, model_dir):
    """`--nnodes 2`: node 1 starts its rank on its own (as `corral serve --node-rank 1`
    does), node 0 runs the engine; they meet at the given address and port."""
    from corral.engine.tensor_parallel_group import free_port, start_node_workers

    make_checkpoint(tmp_path, "llama", vocab_size=49152, tie=False)
    expected = greedy(tmp_path, model_dir, PROMPTS[:1])
    port = free_port()
    node1 = EngineConfig(model=str(tmp_path), tokenizer=str(model_dir), dtype="float32",
                         device="cpu", num_blocks=64, max_model_len=256,
                         tensor_parallel_size=2, nnodes=2, node_rank=1, master_port=port)
    workers = start_node_workers(node1, tmp_path, None)
    try:
        got = greedy(tmp_path, model_dir, PROMPTS[:1], tensor_parallel_size=2, nnodes=2,
                     node_rank=0, master_port=port)
    finally:
        for proc in workers:
            proc.join(timeout=30)
    assert got == expected
    assert all(proc.exitcode == 0 for proc in workers)


def test_splits_that_cannot_work_are_refused():
    from types import SimpleNamespace

    config = SimpleNamespace(num_attention_heads=6, num_key_value_heads=2,
                             intermediate_size=128)
    with pytest.raises(ParamError, match="attention heads") as err:
        check_tensor_parallel(config, 4)
    assert err.value.param == "tensor_parallel_size"
    config = SimpleNamespace(num_attention_heads=12, num_key_value_heads=4,
                             intermediate_size=128)
    with pytest.raises(ParamError, match="key-value heads"):
        check_tensor_parallel(config, 6)  # 6 ranks over 4 KV heads: neither split nor copy
    check_tensor_parallel(config, 4)
    assert TensorParallel(3, 8).kv_heads(2) == (0, 1)
    assert TensorParallel(5, 8).kv_heads(2) == (1, 1)
    with pytest.raises(ParamError) as err:
        EngineConfig(tensor_parallel_size=4, nnodes=3)
    assert err.value.param == "nnodes"
    with pytest.raises(ParamError) as err:
        EngineConfig(tensor_parallel_size=4, nnodes=2)
    assert err.value.param == "master_port"
