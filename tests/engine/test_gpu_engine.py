"""On a GPU: the loops that only a GPU runs by default (async scheduling with grammar masks
filled on a worker thread; draft verification as decode rows inside CUDA graphs) give the
same greedy tokens as the plain synchronous loop. Random weights in a small Llama shape,
float32 so that the comparisons are exact."""

from __future__ import annotations

import os
import random

import pytest
import torch

from corral.engine import LLM, SamplingParams, StructuredOutputsParams

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

SCHEMA = {"type": "object", "properties": {
    "items": {"type": "array", "items": {"type": "object", "properties": {
        "id": {"type": "integer"}, "label": {"type": "string", "maxLength": 12}},
        "required": ["id", "label"], "additionalProperties": False}, "maxItems": 4}},
    "required": ["items"], "additionalProperties": False}


def _engine(**kwargs) -> LLM:
    # The tokenizer: the embedded model's, or a model folder's ($CORRAL_GPU_TEST_MODEL).
    return LLM(os.environ.get("CORRAL_GPU_TEST_MODEL"), shape="llama3-1b", load_format="dummy",
               dtype="float32", device="cuda", max_num_seqs=16, max_model_len=2048,
               enable_prefix_caching=False, num_blocks=1024, **kwargs)


def _workload(vocab_size: int) -> tuple[list[list[int]], list[SamplingParams]]:
    rng = random.Random(0)
    prompts, params = [], []
    for i in range(12):
        piece = [rng.randrange(1000, vocab_size - 1000) for _ in range(24)]
        prompts.append(piece * 4 + piece[:5])  # repeats: n-gram drafts find matches
        constraint = StructuredOutputsParams(json=SCHEMA) if i % 3 == 0 else None
        params.append(SamplingParams(temperature=0, max_tokens=48, ignore_eos=True,
                                     structured_outputs=constraint))
    return prompts, params


@pytest.fixture(scope="module")
def plain_llm():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    llm = _engine()
    yield llm
    llm.engine.shutdown()


def test_async_overlapped_masks_equal_the_sync_loop(plain_llm):
    engine = plain_llm.engine
    assert engine.async_scheduling and engine.grammar_step.overlap
    prompts, params = _workload(engine.vocab_size)
    launched_ahead = plain_llm.generate(prompts, params)
    engine.async_scheduling = engine.grammar_step.overlap = False
    try:
        sync = plain_llm.generate(prompts, params)
    finally:
        engine.async_scheduling = engine.grammar_step.overlap = True
    for a, b in zip(sync, launched_ahead, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].finish_reason == b.outputs[0].finish_reason


def test_mixed_steps_in_cut_graphs_equal_eager_steps(plain_llm):
    """More requests than sequence slots: new prompts join running decodes, so most
    prefill steps are mixed and replay the graphs cut at attention."""
    engine = plain_llm.engine
    mixed = engine.runner.mixed_graphs
    assert mixed is not None and mixed.sizes[-1] == 1024
    rng = random.Random(1)
    prompts = [[rng.randrange(1000, engine.vocab_size - 1000) for _ in range(rng.randrange(5, 400))]
               for _ in range(40)]
    params = [SamplingParams(temperature=0, max_tokens=rng.randrange(8, 40), ignore_eos=True)
              for _ in prompts]
    replays = mixed.num_replays
    cut = plain_llm.generate(prompts, params)
    assert mixed.num_replays > replays
    engine.runner.mixed_graphs = None
    try:
        eager = plain_llm.generate(prompts, params)
    finally:
        engine.runner.mixed_graphs = mixed
    for a, b in zip(eager, cut, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_draft_rows_in_cuda_graphs_equal_plain_decoding(plain_llm):
    prompts, params = _workload(plain_llm.engine.vocab_size)
    expected = plain_llm.generate(prompts, params)
    spec = _engine(speculative="ngram", num_speculative_tokens=4)
    try:
        engine = spec.engine
        assert engine.runner.graphs is not None and not engine.async_scheduling
        assert engine.runner.graphs.sizes[-1] == 16 * 5
        got = spec.generate(prompts, params)
        stats = engine.get_stats()
    finally:
        spec.engine.shutdown()
    for a, b in zip(expected, got, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
    assert stats.spec_accepted_tokens_total > 0
    assert stats.generation_tokens_total > stats.num_decode_passes
