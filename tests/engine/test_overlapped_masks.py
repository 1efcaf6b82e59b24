"""Grammar masks filled on a worker thread while the engine thread goes on (the GPU
overlap) change no output."""

from __future__ import annotations

import json

import pytest

from corral.engine import SamplingParams, StructuredOutputsParams

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def requests(tokenizer):
    def chat(text):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             tokenize=False, add_generation_prompt=True)
    return [
        (chat("Give me a person as JSON."),
         StructuredOutputsParams(json=SCHEMA)),
        (chat("Is the sky blue? Answer yes or no."),
         StructuredOutputsParams(choice=["yes", "no"])),
        (chat("When did the Apollo 11 landing happen? Give the date."),
         StructuredOutputsParams(regex=r"[0-9]{4}-[0-9]{2}-[0-9]{2}")),
        (chat("Tell me about cats."), None),
        (chat("What is the capital of France?"), "stop:Paris"),
        (chat("Write a long poem about the sea."), "stop:zzz-never"),
    ]


def params_for(reqs, fast_forward: bool) -> list[SamplingParams]:
    """Greedy params for `requests`: "stop:X" specs become stop strings, others grammars."""
    return [
        SamplingParams(temperature=0, max_tokens=40, stop=[spec[5:]], fast_forward=fast_forward)
        if isinstance(spec, str) else
        SamplingParams(temperature=0, max_tokens=40, structured_outputs=spec,
                       fast_forward=fast_forward)
        for _, spec in reqs
    ]


@pytest.mark.parametrize("fast_forward", [False, True])
def test_overlapped_mask_fill_gives_the_same_outputs(llm, tokenizer, fast_forward):
    reqs = requests(tokenizer)
    params = params_for(reqs, fast_forward)
    prompts = [p for p, _ in reqs]
    stepper = llm.engine.grammar_step
    assert stepper.overlap is False  # CPU default
    direct = llm.generate(prompts, params)
    stepper.overlap = True
    try:
        overlapped = llm.generate(prompts, params)
    finally:
        stepper.overlap = False
    for a, b in zip(direct, overlapped, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].text == b.outputs[0].text
        assert a.outputs[0].finish_reason == b.outputs[0].finish_reason
        assert a.outputs[0].stop_reason == b.outputs[0].stop_reason
    assert overlapped[4].outputs[0].stop_reason == "Paris"
    assert overlapped[5].outputs[0].finish_reason == "length"
    person = json.loads(overlapped[0].outputs[0].text)
    assert set(person) == {"name", "age"} and overlapped[0].outputs[0].finish_reason == "stop"
    assert overlapped[1].outputs[0].text in ("yes", "no")
    assert not llm.engine.has_unfinished_requests()


def test_the_fill_worker_has_begun_when_start_fill_returns(monkeypatch):
    """The engine thread's next work is pure Python (appending, detokenizing), which holds
    the GIL: a worker that had not yet entered the native fill would wait for the
    interpreter's switch interval before it could, so `start_fill` returns only once the
    worker runs (made 0.5 s here: without the handshake the fill would start that late)."""
    import sys
    import time

    from corral.engine.grammar_step import GrammarStepper, MaskJobs
    from corral.grammars import mask_fill

    began: list[float] = []

    def compute(self):
        began.append(time.perf_counter())
        time.sleep(0.01)  # the native part: holds no GIL

    monkeypatch.setattr(mask_fill.MaskFill, "compute", compute)
    stepper = GrammarStepper(vocab_size=64, max_rows=2, pin_memory=False, overlap=True)
    jobs = MaskJobs()
    jobs.add(object(), [])  # planned as a row of another backend; compute is patched
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.5)
    try:
        stepper.start_fill(jobs)  # the first fill starts the worker thread (which runs it)
        stepper.wait_fill()
        began.clear()
        stepper.start_fill(jobs)  # now the worker waits on its queue
        returned = time.perf_counter()
        end = returned + 0.02
        while time.perf_counter() < end:  # the engine thread's Python work
            pass
        assert stepper.wait_fill() == []
    finally:
        sys.setswitchinterval(interval)
        stepper.shutdown()
    assert began and began[0] <= returned
