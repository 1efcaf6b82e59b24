"""Constrained outputs cut by max_tokens still finish valid: the engine steers them to a
short valid end of their grammar, or, where none fits, returns nothing ("length")."""

from __future__ import annotations

import json

import jsonschema
import pytest

from corral.engine import SamplingParams, StructuredOutputsParams
from tests.grammars.test_jsonschemabench import load_bench

CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


def _chat(tokenizer, text: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


@pytest.fixture(scope="module")
def schemas(llm, datasets_dir):
    """A dozen JSONSchemaBench schemas across splits that the default backend compiles."""
    chosen, splits = [], {}
    for split, _, entry in load_bench(datasets_dir):
        if splits.get(split, 0) >= 2:
            continue
        try:
            llm.engine.grammar.compile(StructuredOutputsParams(json=entry["schema"]))
        except ValueError:
            continue
        splits[split] = splits.get(split, 0) + 1
        chosen.append(entry["schema"])
    return chosen[:12]


@pytest.mark.parametrize(("max_tokens", "min_closed"), [(12, 3), (24, 6), (48, 8)])
def test_outputs_validate_or_end_empty(llm, tokenizer, schemas, max_tokens, min_closed):
    prompts = [_chat(tokenizer, "Reply with JSON valid against: "
                     + json.dumps(s, separators=(",", ":"))[:2000]) for s in schemas]
    params = [SamplingParams(temperature=0, max_tokens=max_tokens,
                             structured_outputs=StructuredOutputsParams(json=s))
              for s in schemas]
    outputs = llm.generate(prompts, params)
    closed = 0
    for schema, out in zip(schemas, outputs, strict=True):
        completion = out.outputs[0]
        assert len(completion.token_ids) <= max_tokens
        if completion.finish_reason == "length":
            assert completion.text == "" and completion.token_ids == []
            continue
        assert completion.finish_reason == "stop"
        value = json.loads(completion.text)
        jsonschema.Draft202012Validator(schema, format_checker=CHECKER).validate(value)
        closed += 1
    assert closed >= min_closed


def test_a_cut_structure_is_closed_not_cut(llm, tokenizer):
    schema = {"type": "object", "properties": {"animals": {"type": "array", "items": {
        "type": "object", "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}},
        "required": ["name", "legs"]}}}, "required": ["animals"], "additionalProperties": False}
    prompt = _chat(tokenizer, "List twenty animals and their number of legs, as JSON.")
    constraint = StructuredOutputsParams(json=schema)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=30,
                                                structured_outputs=constraint))[0].outputs[0]
    assert out.finish_reason == "stop" and len(out.token_ids) <= 30
    value = json.loads(out.text)
    assert value["animals"] and all(set(a) == {"name", "legs"} for a in value["animals"])
    cut = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=30,
                                                structured_outputs=constraint,
                                                close_structures=False))[0].outputs[0]
    assert cut.finish_reason == "length" and len(cut.token_ids) == 30
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.text)


def test_nothing_fits_ends_at_once(llm, tokenizer):
    schema = {"type": "object", "properties": {
        "first_name": {"type": "string"}, "last_name": {"type": "string"},
        "street": {"type": "string"}, "city": {"type": "string"}},
        "required": ["first_name", "last_name", "street", "city"]}
    out = llm.generate([_chat(tokenizer, "An address as JSON.")],
                       SamplingParams(temperature=0, max_tokens=5,
                                      structured_outputs=StructuredOutputsParams(json=schema)))
    completion = out[0].outputs[0]
    assert completion.finish_reason == "length" and completion.token_ids == []
    assert not llm.engine.has_unfinished_requests()


def test_async_scheduling_closes_the_same_way(llm, tokenizer, schemas):
    """With async scheduling the closer runs once the next step's sampling is queued (the
    sequence then holds a pending token): the outputs are those of the synchronous loop."""
    prompts = [_chat(tokenizer, "Reply with JSON valid against: "
                     + json.dumps(s, separators=(",", ":"))[:2000]) for s in schemas]
    params = [SamplingParams(temperature=0, max_tokens=24,
                             structured_outputs=StructuredOutputsParams(json=s))
              for s in schemas]
    engine = llm.engine
    before = engine.closer.num_closed
    direct = llm.generate(prompts, params)
    closed_direct = engine.closer.num_closed - before
    engine.async_scheduling = True
    try:
        ahead = llm.generate(prompts, params)
    finally:
        engine.async_scheduling = False
    assert closed_direct > 0  # the closer acted: the test covers it
    assert engine.closer.num_closed - before == 2 * closed_direct
    for x, y in zip(direct, ahead, strict=True):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert x.outputs[0].finish_reason == y.outputs[0].finish_reason
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks


def test_shown_output_is_never_taken_back(llm, tokenizer, schemas):
    """What each step shows of a constrained output (what a stream sends) is a prefix of
    its final output, though the closer takes tokens back near the limit."""
    engine = llm.engine
    prompts = [_chat(tokenizer, "Reply with JSON valid against: "
                     + json.dumps(s, separators=(",", ":"))[:2000]) for s in schemas]
    taken_back = engine.closer.num_taken_back
    for max_tokens in (24, 48):
        shown: dict[str, list] = {}
        for i, (prompt, schema) in enumerate(zip(prompts, schemas, strict=True)):
            engine.add_request(f"shown-{max_tokens}-{i}", prompt, SamplingParams(
                temperature=0, max_tokens=max_tokens,
                structured_outputs=StructuredOutputsParams(json=schema)))
        final = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                shown.setdefault(out.request_id, []).append(out.outputs[0])
                if out.finished:
                    final[out.request_id] = out.outputs[0]
        for request_id, seen in shown.items():
            last = final[request_id]
            for part in seen:
                assert last.text.startswith(part.text), (request_id, part.text, last.text)
                assert last.token_ids[: len(part.token_ids)] == part.token_ids
    assert engine.closer.num_taken_back > taken_back  # the closer did take tokens back


def test_searches_in_worker_processes_close_the_same_way(llm, tokenizer, schemas):
    """Deferred completion searches run in worker processes give the outputs of searches
    run on the engine thread: the same completions, taken at the same steps."""
    import time

    from corral.grammars.completion_pool import CompletionSearchPool

    engine = llm.engine
    prompts = [_chat(tokenizer, "Reply with JSON valid against: "
                     + json.dumps(s, separators=(",", ":"))[:2000]) for s in schemas]
    params = [SamplingParams(temperature=0, max_tokens=48,
                             structured_outputs=StructuredOutputsParams(json=s))
              for s in schemas]
    closer = engine.closer
    deferred = closer.num_deferred
    inline = llm.generate(prompts, params)
    assert closer.num_deferred > deferred  # deferred searches ran (on this thread)
    pool = CompletionSearchPool(engine.tokenizer, engine.vocab_size, engine.eos_token_ids, 1)
    try:
        deadline = time.monotonic() + 120
        while not pool.ready and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pool.ready
        closer.pool, pooled, deferred = pool, closer.num_pooled, closer.num_deferred
        pooled_out = llm.generate(prompts, params)
        assert closer.num_pooled > pooled  # ... and now in the worker: every one of them,
        assert closer.num_pooled - pooled == closer.num_deferred - deferred  # near-end too
        # A grammar's start completion, searched in the worker at compile time: the same.
        from corral.grammars.compiler import GrammarCompiler

        compilers = [GrammarCompiler(engine.tokenizer, engine.vocab_size, engine.eos_token_ids)
                     for _ in range(2)]
        compilers[1].search_pool = pool
        futures, submit = [], pool.submit
        pool.submit = lambda *args: futures.append(submit(*args)) or futures[-1]
        starts = [[c.compile(StructuredOutputsParams(json=s)).start_completion
                   for s in schemas] for c in compilers]
        assert starts[0] == starts[1] and any(starts[0])
        assert len(futures) == len(schemas) and all(f.exception() is None for f in futures)
    finally:
        closer.pool = None
        pool.shutdown()
    for x, y in zip(inline, pooled_out, strict=True):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert x.outputs[0].finish_reason == y.outputs[0].finish_reason
    assert not engine.has_unfinished_requests()


def test_searches_not_back_in_time_are_run_where_they_started(llm, tokenizer, schemas):
    """A worker's answer that is not back when due is searched on the engine thread from
    the state the search started at: the outputs are those of searches run there."""
    from concurrent.futures import Future

    class NeverAnswers:
        num_workers, ready = 1, True

        def submit(self, *args) -> Future:
            return Future()  # never done: every answer is late

    engine = llm.engine
    prompts = [_chat(tokenizer, "Reply with JSON valid against: "
                     + json.dumps(s, separators=(",", ":"))[:2000]) for s in schemas]
    params = [SamplingParams(temperature=0, max_tokens=48,
                             structured_outputs=StructuredOutputsParams(json=s))
              for s in schemas]
    closer = engine.closer
    inline = llm.generate(prompts, params)
    late = closer.num_late
    closer.pool = NeverAnswers()
    try:
        searched_back = llm.generate(prompts, params)
    finally:
        closer.pool = None
    assert closer.num_late > late
    for x, y in zip(inline, searched_back, strict=True):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert x.outputs[0].finish_reason == y.outputs[0].finish_reason


def test_searches_replay_the_matchers_own_backend(llm, tokenizer, schemas):
    """A grammar's matchers may come from two backends (a regex moves to an outlines-core
    index once it is built); a worker's search replays the sequence's own matcher backend,
    whose token-level choices its answer must share."""
    from concurrent.futures import Future

    class Records:
        num_workers, ready = 1, True

        def __init__(self) -> None:
            self.backends: list[str] = []

        def submit(self, kind, text, backend, *args) -> Future:
            self.backends.append(backend)
            return Future()  # never answered: searched back on the engine thread

    engine = llm.engine
    prompts = [_chat(tokenizer, "Reply with JSON valid against: "
                     + json.dumps(s, separators=(",", ":"))[:2000]) for s in schemas]
    constraints = [StructuredOutputsParams(json=s, backend="llguidance") for s in schemas]
    params = [SamplingParams(temperature=0, max_tokens=48, structured_outputs=c)
              for c in constraints]
    grammars = [engine.grammar.compile(c) for c in constraints]
    factories = [g._factory for g in grammars]
    for grammar, factory in zip(grammars, factories, strict=True):
        grammar.switch_to("outlines", factory)  # labelled outlines, llguidance matchers
    closer, pool = engine.closer, Records()
    closer.pool = pool
    try:
        outs = llm.generate(prompts, params)
    finally:
        closer.pool = None
        for grammar, factory in zip(grammars, factories, strict=True):
            grammar.switch_to("llguidance", factory)
    assert pool.backends and set(pool.backends) == {"llguidance"}
    for out, schema in zip(outs, schemas, strict=True):
        if out.outputs[0].finish_reason == "stop":
            jsonschema.validate(json.loads(out.outputs[0].text), schema)


def test_a_budget_inside_the_watch_zone_never_runs_over(llm, tokenizer, schemas):
    """A budget that starts inside the closer's watch zone: the first tokens may still be
    rolled back, and an output with no way out left ends at its limit, never past it."""
    object_only = {"type": "object"}
    out = llm.generate([[1000, 1001]], SamplingParams(
        temperature=0, max_tokens=1,
        structured_outputs=StructuredOutputsParams(json=object_only)))[0].outputs[0]
    assert out.finish_reason == "stop" and len(out.token_ids) == 1
    assert json.loads(out.text) == {}
    for max_tokens in (2, 3, 6):
        prompts = [_chat(tokenizer, "Reply with JSON valid against: "
                         + json.dumps(s, separators=(",", ":"))[:2000]) for s in schemas]
        params = [SamplingParams(temperature=0, max_tokens=max_tokens,
                                 structured_outputs=StructuredOutputsParams(json=s))
                  for s in schemas]
        for schema, result in zip(schemas, llm.generate(prompts, params), strict=True):
            completion = result.outputs[0]
            assert len(completion.token_ids) <= max_tokens
            if completion.finish_reason == "stop":
                value = json.loads(completion.text)
                jsonschema.Draft202012Validator(schema, format_checker=CHECKER).validate(value)
    assert not llm.engine.has_unfinished_requests()


def test_a_held_stream_catches_up_within_a_few_steps(llm, tokenizer, schemas):
    """Near the limit the output shown waits where a roll back would land; with searches
    started after two held tokens (as with worker processes), it catches up within a few
    steps, also once a shorter completion has moved the watch zone's edge back (it stayed
    held until the zone came round again: 28 steps on this workload)."""
    from corral.engine.structure_closer import HELD_SEARCH

    engine, closer = llm.engine, llm.engine.closer
    prompts = [_chat(tokenizer, "Reply with JSON valid against: "
                     + json.dumps(s, separators=(",", ":"))[:2000]) for s in schemas]
    stale, closer.stale_search = closer.stale_search, HELD_SEARCH
    try:
        for i, (prompt, schema) in enumerate(zip(prompts, schemas, strict=True)):
            engine.add_request(f"held-{i}", prompt, SamplingParams(
                temperature=0, max_tokens=128,
                structured_outputs=StructuredOutputsParams(json=schema)))
        shown: dict[str, int] = {}
        changed: dict[str, int] = {}
        longest, step = 0, 0
        while engine.has_unfinished_requests():
            step += 1
            for out in engine.step():
                count = len(out.outputs[0].token_ids)
                if count != shown.get(out.request_id, 0):
                    if out.request_id in changed:
                        longest = max(longest, step - changed[out.request_id])
                    changed[out.request_id], shown[out.request_id] = step, count
    finally:
        closer.stale_search = stale
    assert 0 < longest <= 12
