"""Tiny random-weight Llama, Qwen2, Qwen3 and Mistral checkpoints: Corral's logits equal
transformers' forward pass, through prefill and paged decode steps."""

from __future__ import annotations

import pytest
import torch

from corral.engine.attention import AttentionMetadata
from corral.engine.config import EngineConfig
from corral.engine.model_runner import ModelRunner

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-6)


def make_checkpoint(family: str, path, tie: bool, rope_scaling: dict | None = None):
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[family]
    extra = {"rope_scaling": rope_scaling} if rope_scaling else {}
    config = config_cls(tie_word_embeddings=tie, **COMMON, **extra)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    if family == "qwen2":  # give the q/k/v biases non-zero values
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                             layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    if family == "qwen3":  # per-head q/k norms away from their all-ones init
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.normal_(1, 0.5)
                layer.self_attn.k_norm.weight.normal_(1, 0.5)
    model.save_pretrained(path)
    return model


def meta_for(seq_len_before: int, num_new: int, block_table: list[int], block_size: int):
    positions = torch.arange(seq_len_before, seq_len_before + num_new)
    table = torch.tensor(block_table)
    slots = table[positions // block_size] * block_size + positions % block_size
    seq_len = seq_len_before + num_new
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, num_new], dtype=torch.int32),
        seq_lens=torch.tensor([seq_len], dtype=torch.int32),
        block_tables=table.to(torch.int32).unsqueeze(0),
        slot_mapping=slots,
        num_decodes=int(num_new == 1), num_decode_tokens=int(num_new == 1),
        max_query_len=num_new, max_seq_len=seq_len,
        query_start_loc_cpu=[0, num_new], seq_lens_cpu=[seq_len],
    )
    return positions, meta


@pytest.mark.parametrize("family,tie,rope", [
    ("llama", True, None),
    ("llama", False, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    ("qwen2", False, None),
    ("mistral", False, None),
    ("qwen3", False, None),
    ("qwen3", True, None),
])
def test_logits_match_transformers(tmp_path, family, tie, rope):
    reference = make_checkpoint(family, tmp_path, tie, rope)
    runner = ModelRunner(EngineConfig(model=str(tmp_path), num_blocks=16, block_size=8,
                                      dtype="float32"),
                         tmp_path, None, None)
    runner.allocate_kv_cache()
    torch.manual_seed(1)
    ids = torch.randint(0, COMMON["vocab_size"], (30,))
    with torch.inference_mode():
        expected = reference(ids.unsqueeze(0)).logits[0]  # [30, vocab]
        block_table = [3, 7, 1, 12]  # scattered on purpose
        # Prefill 20 tokens in two chunks, then decode 10 one by one.
        got = []
        done = 0
        for n in [12, 8] + [1] * 10:
            positions, meta = meta_for(done, n, block_table, 8)
            hidden = runner.model(ids[done : done + n], positions, runner.kv_caches, meta)
            got.append(runner.model.compute_logits(hidden))
            done += n
    torch.testing.assert_close(torch.cat(got), expected, rtol=1e-4, atol=1e-4)


def test_qwen3_greedy_tokens_match_transformers(tmp_path, model_families_dir):
    """A tiny random Qwen3 with the family's real tokenizer and chat template, served by
    `LLM`: greedy tokens equal transformers' `generate` (float32)."""
    import gzip
    import shutil

    import transformers

    from corral.engine import LLM, SamplingParams

    family = model_families_dir / "qwen3"
    with gzip.open(family / "tokenizer.json.gz") as src, open(tmp_path / "tokenizer.json",
                                                             "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(family / "tokenizer_config.json", tmp_path)
    shutil.copy(family / "chat_template.jinja", tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    config = transformers.Qwen3Config(**{**COMMON, "vocab_size": len(tokenizer)},
                                      head_dim=32, tie_word_embeddings=True,
                                      eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.normal_(1, 0.5)
            layer.self_attn.k_norm.weight.normal_(1, 0.5)
    model.save_pretrained(tmp_path)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             tokenize=False, add_generation_prompt=True)
               for text in ("What is the capital of France?", "Write a haiku about rain.")]
    llm = LLM(str(tmp_path), dtype="float32", num_blocks=64, max_model_len=256)
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12,
                                                   ignore_eos=True))
    for prompt, out in zip(prompts, outputs, strict=True):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            expected = model.generate(ids, max_new_tokens=12, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
        assert out.outputs[0].token_ids == expected.tolist()
