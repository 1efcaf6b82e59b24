"""Greedy outputs do not depend on batching, preemption or prefix caching."""

from __future__ import annotations

import pytest

from corral.engine import LLM, SamplingParams

from .prompts import CHATS

PARAMS = SamplingParams(temperature=0, max_tokens=24, min_tokens=24)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in CHATS]


@pytest.fixture(scope="module")
def together(llm, prompts):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, PARAMS)]


def test_alone_equals_together(llm, prompts, together):
    for prompt, expected in zip(prompts, together, strict=True):
        assert llm.generate(prompt, PARAMS)[0].outputs[0].token_ids == expected


def test_small_pool_preempts_and_matches(prompts, together):
    # 130 blocks of 16 hold the long prompt (~1.7k tokens) but not everything at once.
    small = LLM(max_model_len=2048, num_blocks=130, max_num_batched_tokens=512,
                dtype="float32")
    outputs = small.generate(prompts, PARAMS)
    assert small.engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outputs] == together
    assert small.engine.block_manager.num_free_blocks == 130


def test_prefix_caching_off_matches(prompts, together):
    plain = LLM(max_model_len=4096, enable_prefix_caching=False, dtype="float32")
    assert [o.outputs[0].token_ids for o in plain.generate(prompts, PARAMS)] == together
    assert plain.engine.block_manager.prefix_cache_hits == 0


def test_prefix_cache_hit_skips_computed_tokens(llm, prompts, together):
    engine = llm.engine
    llm.generate(prompts[-1], PARAMS)
    computed_before = engine.stats.prompt_tokens_total
    hits_before = engine.block_manager.prefix_cache_hits
    out = llm.generate(prompts[-1], PARAMS)[0]
    cached = out.metrics.num_cached_prompt_tokens
    assert cached >= len(out.prompt_token_ids) - 16
    assert engine.block_manager.prefix_cache_hits - hits_before == cached
    assert engine.stats.prompt_tokens_total - computed_before == len(out.prompt_token_ids) - cached
    assert out.outputs[0].token_ids == together[-1]
