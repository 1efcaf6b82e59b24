"""Corral's greedy tokens equal transformers' own generate() on the embedded model."""

from __future__ import annotations

import pytest
import torch

from corral.engine import LLM, SamplingParams

from .prompts import CHATS

NEW_TOKENS = 64


@pytest.fixture(scope="module")
def reference_outputs(model_dir, tokenizer):
    """transformers generate(), greedy, one prompt at a time, EOS suppressed."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outputs = []
    for chat in CHATS:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 pad_token_id=tokenizer.eos_token_id)
        outputs.append((ids[0].tolist(), out[0, ids.shape[1]:].tolist()))
    return outputs


def test_long_prompt_needs_chunked_prefill(reference_outputs):
    assert max(len(p) for p, _ in reference_outputs) > 1000


def test_greedy_tokens_match_transformers(reference_outputs):
    # A 512-token step budget splits the long prompt over several steps (chunked prefill).
    llm = LLM(max_model_len=4096, max_num_batched_tokens=512, dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    outputs = llm.generate([p for p, _ in reference_outputs], params)
    for (prompt, expected), out in zip(reference_outputs, outputs, strict=True):
        assert out.prompt_token_ids == prompt
        assert out.outputs[0].token_ids == expected
        assert out.outputs[0].finish_reason == "length"
