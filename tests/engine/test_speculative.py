"""Speculative decoding: drafts (grammar-forced tokens, n-gram matches) verified in one
forward pass change no greedy output, keep sampled outputs' distribution, and pay."""

from __future__ import annotations

import json

import pytest
import torch

from corral.engine import LLM, SamplingParams, StructuredOutputsParams
from corral.engine.draft_proposer import NgramIndex
from corral.engine.sampler import SampleBatch, Sampler
from tests.engine.test_async_scheduling import _outputs_equal
from tests.engine.test_overlapped_masks import params_for, requests

SCHEMA = {"type": "object", "properties": {
    "people": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 16}, "city": {"type": "string", "maxLength": 16},
        "age": {"type": "integer"}}, "required": ["name", "city", "age"],
        "additionalProperties": False}, "minItems": 2, "maxItems": 3}},
    "required": ["people"], "additionalProperties": False}


@pytest.fixture(scope="module")
def spec_llm(model_dir):
    """An engine that drafts n-gram matches and grammar-forced tokens (4 per step)."""
    llm = LLM(max_model_len=2048, dtype="float32", speculative="ngram",
              num_speculative_tokens=4, kv_cache_memory=256 * 1024**2)
    yield llm
    llm.engine.shutdown()


def chat(tokenizer, text: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def test_ngram_index_finds_the_latest_earlier_match():
    index = NgramIndex(min_n=2, max_n=3)
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3]
    index.update(tokens)
    assert index.lookup(tokens, 3) == [7, 5, 1]  # after the latest earlier "1 2 3"
    assert index.lookup([4, 4], 2) == []
    tokens += [7]
    index.update(tokens)
    assert index.lookup(tokens, 2) == [5, 1]  # "2 3 7" seen before, then "5 1"


def test_greedy_outputs_equal_plain_decoding(llm, spec_llm, tokenizer):
    reqs = requests(tokenizer)
    prompts = [p for p, _ in reqs]
    prompts.append(chat(tokenizer, "List three people with their cities, as JSON."))
    params = params_for(reqs, fast_forward=False)
    params.append(SamplingParams(temperature=0, max_tokens=96,
                                 structured_outputs=StructuredOutputsParams(json=SCHEMA)))
    params.append(SamplingParams(temperature=0, max_tokens=40, n=2))
    prompts.append("Repeat after me: the cat sat on the mat, the cat sat on the mat, the cat")
    plain = llm.generate(prompts, params)
    before = spec_llm.engine.get_stats().spec_accepted_tokens_total
    drafted = spec_llm.generate(prompts, params)
    _outputs_equal(plain, drafted)
    stats = spec_llm.engine.get_stats()
    assert stats.spec_accepted_tokens_total > before
    people = json.loads(drafted[-2].outputs[0].text)
    assert 2 <= len(people["people"]) <= 3
    assert not spec_llm.engine.has_unfinished_requests()
    assert spec_llm.engine.block_manager.num_free_blocks == spec_llm.engine.num_kv_blocks


def test_drafts_pay_on_json(spec_llm, tokenizer):
    """JSON with forced keys and repeated structure: well over one token per pass."""
    engine = spec_llm.engine
    stats = engine.get_stats()
    tokens0, passes0 = stats.generation_tokens_total, stats.num_decode_passes
    out = spec_llm.generate([chat(tokenizer, "List three people with their cities, as JSON.")],
                            SamplingParams(temperature=0, max_tokens=96,
                                           structured_outputs=StructuredOutputsParams(
                                               json=SCHEMA)))[0].outputs[0]
    stats = engine.get_stats()
    per_pass = (stats.generation_tokens_total - tokens0) / (stats.num_decode_passes - passes0)
    assert out.finish_reason == "stop" and per_pass > 1.3


def test_request_opt_out_makes_no_drafts(spec_llm, tokenizer):
    engine = spec_llm.engine
    before = engine.get_stats().spec_draft_tokens_total
    spec_llm.generate(["the cat sat on the mat, the cat sat on the mat, the cat sat on"],
                      SamplingParams(temperature=0, max_tokens=24, speculative=False))
    assert engine.get_stats().spec_draft_tokens_total == before


def test_preemption_with_drafts_keeps_outputs(llm, tokenizer, model_dir):
    small = LLM(max_model_len=1024, dtype="float32", speculative="ngram",
                num_speculative_tokens=3, num_blocks=32, max_num_seqs=8)
    try:
        prompts = [chat(tokenizer, f"Count from {i} to {i + 30}, comma separated.")
                   for i in range(6)]
        params = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
        plain = llm.generate(prompts, params)
        drafted = small.generate(prompts, params)
        assert small.engine.scheduler.num_preemptions > 0
        _outputs_equal(plain, drafted)
        assert small.engine.block_manager.num_free_blocks == small.engine.num_kv_blocks
    finally:
        small.engine.shutdown()


def test_seeded_sampling_with_drafts_is_reproducible(spec_llm, tokenizer):
    prompt = "the cat sat on the mat, the cat sat on the mat, the cat sat on the"
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=11, max_tokens=32)
    a = spec_llm.generate([prompt], params)[0].outputs[0]
    b = spec_llm.generate([prompt], params)[0].outputs[0]
    assert a.token_ids == b.token_ids and len(a.token_ids) == 32


class _Row:
    """The parts of a Sequence the sampler reads."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = None
        self.num_output_tokens = 10
        self.output_token_ids: list[int] = []


@pytest.mark.parametrize("draft", [0, 3, 7])
def test_rejection_sampling_keeps_the_distribution(draft):
    """Each row verifies `draft` against p; the kept token (the draft where accepted, the
    row's own token where not) must be distributed as p."""
    torch.manual_seed(0)
    vocab, rows = 8, 40_000
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, 1.5, -1.0, 0.3])
    p = torch.softmax(logits / 0.7, dim=0)
    sampler = Sampler(vocab, [vocab - 1], torch.device("cpu"), seed=5)
    seqs = [_Row(SamplingParams(temperature=0.7))] * rows
    batch = SampleBatch(seqs, draft_ids=[draft] * rows, output_offsets=[0] * rows)
    out = sampler(logits.repeat(rows, 1), batch)
    kept = torch.tensor([draft if acc else tok
                         for tok, acc in zip(out.token_ids, out.accepted, strict=True)])
    freq = torch.bincount(kept, minlength=vocab).float() / rows
    assert torch.allclose(freq, p, atol=0.01), (freq, p)
    assert abs(sum(out.accepted) / rows - float(p[draft])) < 0.01
