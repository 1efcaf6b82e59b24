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
