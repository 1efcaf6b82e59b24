"""Async scheduling (step N+1 launched before step N's tokens are read back) changes no
output: greedy, seeded sampling, n > 1, logprobs, stop strings, grammars with and without
fast-forward, preemption and abort. On CPU the loop runs the same code paths as on a GPU,
with the device work done eagerly."""

from __future__ import annotations

import pytest

from corral.engine import LLM, SamplingParams, StructuredOutputsParams
from corral.engine.sequence import PENDING_TOKEN
from tests.engine.test_overlapped_masks import params_for, requests


def _outputs_equal(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert len(x.outputs) == len(y.outputs)
        for p, q in zip(x.outputs, y.outputs, strict=True):
            assert p.token_ids == q.token_ids
            assert p.text == q.text
            assert (p.finish_reason, p.stop_reason) == (q.finish_reason, q.stop_reason)
            if p.logprobs is not None:
                assert [lp.token_id for lp in p.logprobs] == [lp.token_id for lp in q.logprobs]
                assert [lp.logprob for lp in p.logprobs] == pytest.approx(
                    [lp.logprob for lp in q.logprobs], abs=1e-5)


def _both_ways(llm, prompts, params):
    engine = llm.engine
    assert engine.async_scheduling is False  # CPU default
    direct = llm.generate(prompts, params)
    engine.async_scheduling = True
    try:
        launched_ahead = llm.generate(prompts, params)
    finally:
        engine.async_scheduling = False
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks
    return direct, launched_ahead


@pytest.mark.parametrize("fast_forward", [False, True])
def test_async_scheduling_keeps_grammar_and_stop_outputs(llm, tokenizer, fast_forward):
    reqs = requests(tokenizer)
    params = params_for(reqs, fast_forward)
    direct, ahead = _both_ways(llm, [p for p, _ in reqs], params)
    _outputs_equal(direct, ahead)
    assert ahead[4].outputs[0].stop_reason == "Paris"
    assert ahead[5].outputs[0].finish_reason == "length"


def test_async_scheduling_keeps_sampling_outputs(llm, tokenizer):
    prompts = ["The sea is", "Once upon a time", "def fibonacci(n):", "1, 2, 3,"]
    params = [
        SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=24, n=2),
        SamplingParams(temperature=0, max_tokens=17, logprobs=2),
        SamplingParams(temperature=1.0, top_k=20, seed=3, max_tokens=9, min_tokens=5,
                       frequency_penalty=0.5),
        SamplingParams(temperature=0, max_tokens=1),
    ]
    direct, ahead = _both_ways(llm, prompts, params)
    _outputs_equal(direct, ahead)
    first, second = ahead[0].outputs
    assert first.token_ids != second.token_ids  # n=2 samples differ
    assert len(ahead[3].outputs[0].token_ids) == 1


def test_async_scheduling_survives_preemption(llm, model_dir):
    prompts = [f"Count from {i} to {i + 30}:" for i in range(6)]
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    expected = llm.generate(prompts, params)
    small = LLM(num_blocks=14, max_model_len=256, async_scheduling=True, dtype="float32")
    got = small.generate(prompts, params)
    assert small.engine.scheduler.num_preemptions > 0
    _outputs_equal(expected, got)
    assert small.engine.block_manager.num_free_blocks == 14


def test_abort_with_a_token_in_flight(llm):
    engine = llm.engine
    engine.async_scheduling = True
    try:
        params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
        engine.add_request("keep", "The history of Rome", params)
        engine.add_request("drop", "The history of Greece", params)
        for _ in range(5):
            engine.step()
        assert engine._in_flight is not None
        aborted = engine.abort("drop")
        assert aborted.finished and PENDING_TOKEN not in aborted.outputs[0].token_ids
        final = None
        while engine.has_unfinished_requests():
            for out in engine.step():
                assert PENDING_TOKEN not in out.outputs[0].token_ids
                final = out
        assert final.request_id == "keep" and len(final.outputs[0].token_ids) == 30
        assert engine._in_flight is None
        assert engine.block_manager.num_free_blocks == engine.num_kv_blocks
    finally:
        engine.async_scheduling = False


def test_the_first_async_step_waits_for_its_masks(llm):
    # With nothing in flight (a fresh batch) the masks were started and never waited for:
    # the sampler could read rows not yet written (on a GPU, a first request sampled token
    # 0 against its grammar), and rows sharing a state with another row were never copied.
    # Three requests of one new schema: the last two share the mask cache's first node, so
    # one of them is filled as the other's twin.
    schema = {"type": "object", "properties": {"twin": {"type": "integer"}},
              "required": ["twin"]}
    prompt = "Give me a JSON object:"
    params = SamplingParams(temperature=0, max_tokens=16,
                            structured_outputs=StructuredOutputsParams(json=schema))
    engine = llm.engine
    direct = llm.generate([prompt] * 3, [params] * 3)
    engine.grammar_step.bitmask.zero_()  # no row left over from an earlier step
    engine.async_scheduling = True
    try:
        ahead = llm.generate([prompt] * 3, [params] * 3)
    finally:
        engine.async_scheduling = False
    _outputs_equal(direct, ahead)
    assert all(out.outputs[0].text.startswith("{") for out in ahead)
