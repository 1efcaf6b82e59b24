"""Request models: conversion to SamplingParams and refusals that name the field."""

from __future__ import annotations

import pytest

from corral.api.chat_protocol import ChatCompletionRequest
from corral.api.completion_protocol import CompletionRequest
from corral.api.errors import APIError


def chat(**fields):
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def test_chat_fields_become_sampling_params():
    req = chat(temperature=0.3, top_p=0.9, n=2, seed=7, stop="END", presence_penalty=0.5,
               frequency_penalty=-0.5, logit_bias={"42": 5}, logprobs=True, top_logprobs=3,
               top_k=10, min_p=0.05, repetition_penalty=1.1, min_tokens=2, ignore_eos=True,
               stop_token_ids=[5])
    req.check()
    p = req.sampling_params(max_tokens=20, constraint=None)
    assert (p.temperature, p.top_p, p.n, p.seed, p.stop) == (0.3, 0.9, 2, 7, ["END"])
    assert (p.presence_penalty, p.frequency_penalty, p.logit_bias) == (0.5, -0.5, {42: 5.0})
    assert (p.logprobs, p.top_k, p.min_p, p.repetition_penalty) == (3, 10, 0.05, 1.1)
    assert (p.min_tokens, p.ignore_eos, p.stop_token_ids, p.max_tokens) == (2, True, [5], 20)


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=5, max_completion_tokens=9).requested_max_tokens() == 9
    assert chat(max_tokens=5).requested_max_tokens() == 5
    with pytest.raises(APIError) as e:
        chat(max_completion_tokens=0).requested_max_tokens()
    assert e.value.param == "max_completion_tokens"


@pytest.mark.parametrize("fields,param", [
    ({"temperature": 3.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"n": 0}, "n"),
    ({"presence_penalty": 9}, "presence_penalty"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"min_p": 2.0}, "min_p"),
])
def test_bad_sampling_values_name_their_field(fields, param):
    req = chat(**fields)
    req.check()
    with pytest.raises(APIError) as e:
        req.sampling_params(max_tokens=4, constraint=None)
    assert e.value.status == 400 and e.value.param == param


@pytest.mark.parametrize("fields,param", [
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a+"}},
     "structured_outputs"),
])
def test_cross_field_rules(fields, param):
    with pytest.raises(APIError) as e:
        chat(**fields).check()
    assert e.value.param == param


def test_response_format_maps_to_constraints():
    assert chat(response_format={"type": "text"}).output_constraint(None) is None
    spec = chat(response_format={"type": "json_object"}).output_constraint(None)
    assert spec.json_object is True
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = chat(response_format={"type": "json_schema",
                                 "json_schema": {"name": "x", "schema": schema, "strict": True}}
                ).output_constraint(None)
    assert spec.json == schema
    spec = chat(structured_outputs={"choice": ["yes", "no"]}).output_constraint(None)
    assert spec.choice == ["yes", "no"]
    with pytest.raises(APIError) as e:
        chat(structured_outputs={"regex": "a", "choice": ["b"]}).output_constraint(None)
    assert e.value.param == "structured_outputs"


def test_messages_to_dicts_join_text_parts_and_check_roles():
    req = ChatCompletionRequest.model_validate({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text",
                                                                          "text": "brief"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "2"},
    ]})
    msgs = req.message_dicts()
    assert msgs[0] == {"role": "system", "content": "be brief"}
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == "{\"x\": 1}"
    assert msgs[2]["tool_call_id"] == "call_1"
    bad = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "tool", "content": "2"}]})
    with pytest.raises(APIError) as e:
        bad.message_dicts()
    assert e.value.param == "messages.0.tool_call_id"
    image = ChatCompletionRequest.model_validate({"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
    with pytest.raises(APIError) as e:
        image.message_dicts()
    assert e.value.param == "messages.0.content.0.type"


def test_unknown_fields_are_ignored():
    req = chat(store=True, metadata={"a": "b"}, reasoning_effort="low")
    req.check()
    assert req.sampling_params(max_tokens=3, constraint=None).max_tokens == 3


def test_completion_prompts_and_checks():
    assert CompletionRequest(prompt="a").prompts() == ["a"]
    assert CompletionRequest(prompt=[1, 2, 3]).prompts() == [[1, 2, 3]]
    assert CompletionRequest(prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    for fields, param in [({"logprobs": 6}, "logprobs"), ({"suffix": "x"}, "suffix"),
                          ({"echo": True, "logprobs": 1}, "echo"),
                          ({"best_of": 3}, "best_of")]:
        with pytest.raises(APIError) as e:
            CompletionRequest(prompt="a", **fields).check()
        assert e.value.param == param
    p = CompletionRequest(prompt="a", logprobs=2, structured_outputs={"regex": "[0-9]+"}
                          ).sampling_params(max_tokens=16)
    assert p.logprobs == 2 and p.structured_outputs.regex == "[0-9]+"
