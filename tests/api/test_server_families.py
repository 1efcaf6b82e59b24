"""Chat completions on tiny random Qwen3, Mistral and gpt-oss models with their real
tokenizers and templates: reasoning_content (in messages and stream deltas), the JSON schema
holding after the reasoning, calls in the family's format with its ids, template errors as
400, and the --tool-call-format setting."""

from __future__ import annotations

import json

import jsonschema
import pytest
from fastapi.testclient import TestClient

from corral.api.app import create_app
from corral.api.cli import build_parser
from corral.api.state import ServerSettings
from corral.engine import AsyncLLMEngine

from ..tools.families import build_tiny_checkpoint, load_tokenizer, unpack_tokenizer

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}},
          "required": ["answer"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
    "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
THINK_TOKEN = "151667"  # <think> in Qwen3's vocabulary


def _engine(model_families_dir, tmp_path_factory, family: str) -> AsyncLLMEngine:
    path = unpack_tokenizer(model_families_dir, family, tmp_path_factory.mktemp(family))
    build_tiny_checkpoint(path, load_tokenizer(path), family)
    return AsyncLLMEngine(model=str(path), dtype="float32", num_blocks=96, max_model_len=1024)


@pytest.fixture(scope="module")
def qwen3(model_families_dir, tmp_path_factory):
    engine = _engine(model_families_dir, tmp_path_factory, "qwen3")
    with TestClient(create_app(engine, ServerSettings())) as client:
        yield client
    engine.shutdown()


@pytest.fixture(scope="module")
def mistral_engine(model_families_dir, tmp_path_factory):
    engine = _engine(model_families_dir, tmp_path_factory, "mistral")
    yield engine
    engine.shutdown()


def chat(client, **body):
    body = {"messages": ASK, "max_tokens": 40, "temperature": 0, **body}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def stream(client, **body):
    """Reasoning, content, calls [(name, arguments)] and finish reason from a stream."""
    body = {"messages": ASK, "max_tokens": 40, "temperature": 0, "stream": True, **body}
    reasoning, content, calls, finish = "", "", {}, None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                delta = choice["delta"]
                reasoning += delta.get("reasoning_content") or ""
                content += delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    entry = calls.setdefault(call["index"], ["", ""])
                    entry[0] += call.get("function", {}).get("name") or ""
                    entry[1] += call.get("function", {}).get("arguments") or ""
                finish = choice["finish_reason"] or finish
    return reasoning or None, content or None, [tuple(c) for _, c in sorted(calls.items())], \
        finish


def test_reasoning_is_returned_apart_and_the_schema_holds_after_it(qwen3):
    body = {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "a", "schema": SCHEMA}},
            "logit_bias": {THINK_TOKEN: 50}, "max_reasoning_tokens": 6}
    choice = chat(qwen3, **body)
    message = choice["message"]
    assert message["reasoning_content"] and "<think>" not in message["reasoning_content"]
    jsonschema.validate(json.loads(message["content"]), SCHEMA)
    assert stream(qwen3, **body) == (message["reasoning_content"], message["content"], [],
                                     choice["finish_reason"])


def test_chat_template_kwargs_turn_thinking_off(qwen3):
    choice = chat(qwen3, chat_template_kwargs={"enable_thinking": False},
                  logit_bias={THINK_TOKEN: 50},
                  response_format={"type": "json_schema",
                                   "json_schema": {"name": "a", "schema": SCHEMA}})
    assert choice["message"]["reasoning_content"] is None
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


def test_tool_calls_after_reasoning_stream_the_same(qwen3):
    body = {"tools": [WEATHER], "tool_choice": "required", "max_reasoning_tokens": 4,
            "parallel_tool_calls": False,
            "logit_bias": {THINK_TOKEN: 50}, "max_tokens": 60}
    choice = chat(qwen3, **body)
    message = choice["message"]
    assert choice["finish_reason"] == "tool_calls" and message["reasoning_content"]
    [call] = message["tool_calls"]
    jsonschema.validate(json.loads(call["function"]["arguments"]),
                        WEATHER["function"]["parameters"])
    assert stream(qwen3, **body) == (
        message["reasoning_content"], None,
        [(call["function"]["name"], call["function"]["arguments"])], "tool_calls")


def test_bad_reasoning_fields_are_400(qwen3):
    response = qwen3.post("/v1/chat/completions",
                          json={"messages": ASK, "max_reasoning_tokens": 0})
    assert response.status_code == 400
    assert response.json()["error"]["param"].endswith("max_reasoning_tokens")
    response = qwen3.post("/v1/chat/completions", json={
        "messages": ASK, "chat_template_kwargs": {"add_generation_prompt": False}})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "chat_template_kwargs.add_generation_prompt"


def test_mistral_calls_carry_ids_its_template_takes_back(mistral_engine):
    with TestClient(create_app(mistral_engine, ServerSettings())) as client:
        body = {"tools": [WEATHER], "tool_choice": "required", "max_tokens": 48}
        choice = chat(client, **body)
        [call] = choice["message"]["tool_calls"]
        assert len(call["id"]) == 9 and call["id"].isalnum()
        assert stream(client, **body)[1:] == (
            None, [(call["function"]["name"], call["function"]["arguments"])], "tool_calls")
        history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 21}'},
                   {"role": "assistant", "content": "21 degrees."},
                   {"role": "user", "content": "And Lyon?"},
                   {"role": "assistant", "content": None, "tool_calls": [
                       {**call, "id": "call_from_elsewhere"}]},
                   {"role": "tool", "tool_call_id": "call_from_elsewhere", "content": "20"}]
        chat(client, messages=history, tools=[WEATHER], max_tokens=4)
        # The template's own refusal comes back as a 400 quoting it.
        response = client.post("/v1/chat/completions", json={"messages": [*ASK, *ASK]})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "messages" and "roles must alternate" in error["message"]


def test_the_tool_call_format_setting_overrides_detection(mistral_engine):
    args = build_parser({}).parse_args(["serve", "--tool-call-format", "hermes"])
    settings = ServerSettings(tool_call_format=args.tool_call_format)
    with TestClient(create_app(mistral_engine, settings)) as client:
        choice = chat(client, tools=[WEATHER], tool_choice="required", max_tokens=48)
        [call] = choice["message"]["tool_calls"]
        assert call["id"].startswith("call_")  # Hermes ids, not Mistral's
    with pytest.raises(ValueError, match="tool_call_format"):
        ServerSettings(tool_call_format="chatml")


@pytest.fixture(scope="module")
def gpt_oss(model_families_dir, tmp_path_factory):
    """A tiny gpt-oss model (sinks, sliding window, experts) with its real tokenizer and
    harmony template."""
    engine = _engine(model_families_dir, tmp_path_factory, "gpt-oss")
    with TestClient(create_app(engine, ServerSettings())) as client:
        yield client
    engine.shutdown()


def test_gpt_oss_reasons_in_its_analysis_channel_then_answers_in_the_schema(gpt_oss):
    body = {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "a", "schema": SCHEMA}},
            "max_reasoning_tokens": 6, "max_tokens": 48}
    choice = chat(gpt_oss, **body)
    message = choice["message"]
    assert "<|channel|>" not in (message["content"] or "")
    jsonschema.validate(json.loads(message["content"]), SCHEMA)
    assert stream(gpt_oss, **body) == (message["reasoning_content"], message["content"], [],
                                       choice["finish_reason"])


@pytest.mark.parametrize("tool_choice", [
    "required", {"type": "function", "function": {"name": "get_weather"}}])
def test_gpt_oss_calls_parse_validate_and_stream_the_same(gpt_oss, tool_choice):
    body = {"tools": [WEATHER], "tool_choice": tool_choice, "max_reasoning_tokens": 4,
            "max_tokens": 64}
    choice = chat(gpt_oss, **body)
    message = choice["message"]
    assert choice["finish_reason"] == "tool_calls" and message["tool_calls"]
    for call in message["tool_calls"]:
        assert call["function"]["name"] == "get_weather"
        jsonschema.validate(json.loads(call["function"]["arguments"]),
                            WEATHER["function"]["parameters"])
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
    assert stream(gpt_oss, **body) == (message["reasoning_content"], message["content"], calls,
                                       "tool_calls")
