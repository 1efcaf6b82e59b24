"""Function calling through the server: every tool_choice mode, parallel calls, two turns."""

from __future__ import annotations

import json

import jsonschema
import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "the city name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def assert_valid_calls(message, finish_reason=None):
    """Every call is valid and complete, whatever the finish reason."""
    calls = list(message.tool_calls or [])
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in SCHEMAS
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def call(client, **kwargs):
    args = dict(model="", messages=ASK, tools=TOOLS, max_tokens=60, temperature=0)
    args.update(kwargs)
    return client.chat.completions.create(**args)


def streamed(client, **kwargs):
    """Content, calls [(name, arguments)] and finish reason from a stream."""
    content, calls, finish = "", {}, None
    for chunk in call(client, stream=True, **kwargs):
        for ch in chunk.choices:
            content += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"name": None, "arguments": "", "id": None})
                if tc.id:
                    assert entry["id"] is None and tc.function.name
                    entry["id"], entry["name"] = tc.id, tc.function.name
                entry["arguments"] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    return content or None, [(c["name"], c["arguments"]) for _, c in sorted(calls.items())], finish


@pytest.mark.parametrize("tool_choice", [
    "required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_calls_are_valid_and_stream_the_same(client, tool_choice):
    r = call(client, tool_choice=tool_choice, parallel_tool_calls=False)
    msg = r.choices[0].message
    assert msg.tool_calls, msg
    assert msg.content is None
    assert r.choices[0].finish_reason == "tool_calls"
    assert_valid_calls(msg)
    if isinstance(tool_choice, dict):
        assert [c.function.name for c in msg.tool_calls] == ["get_weather"]
    content, calls, finish = streamed(client, tool_choice=tool_choice,
                                      parallel_tool_calls=False)
    assert content is None and finish == "tool_calls"
    assert calls == [(c.function.name, c.function.arguments) for c in msg.tool_calls]


def test_tool_choice_none_never_calls(client):
    r = call(client, tool_choice="none", max_tokens=20)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_tool_choice_auto_is_valid_either_way_and_streams_the_same(client):
    r = call(client, tool_choice="auto")
    msg = r.choices[0].message
    assert_valid_calls(msg)
    assert (r.choices[0].finish_reason == "tool_calls") == bool(msg.tool_calls)
    content, calls, finish = streamed(client, tool_choice="auto")
    assert content == msg.content and finish == r.choices[0].finish_reason
    assert calls == [(c.function.name, c.function.arguments) for c in msg.tool_calls or []]


def test_parallel_tool_calls_flag(client):
    ask = [{"role": "user", "content": "What is the weather in Paris, in London and in Rome?"}]
    single = call(client, messages=ask, tool_choice="required", parallel_tool_calls=False,
                  max_tokens=120)
    assert len(single.choices[0].message.tool_calls) == 1
    many = call(client, messages=ask, tool_choice="required", max_tokens=120)
    msg = many.choices[0].message
    assert_valid_calls(msg, many.choices[0].finish_reason)
    assert len(msg.tool_calls) >= 2, msg
    assert len({c.id for c in msg.tool_calls}) == len(msg.tool_calls)


def test_two_turn_tool_conversation(client):
    first = call(client, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    tc = first.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": tc.id, "type": "function",
             "function": {"name": tc.function.name, "arguments": tc.function.arguments}}]},
        {"role": "tool", "tool_call_id": tc.id, "content": "{\"temperature_c\": 21, "
                                                          "\"sky\": \"sunny\"}"},
    ]
    second = call(client, messages=history, tool_choice="none", max_tokens=30)
    assert second.choices[0].message.content
    assert second.choices[0].message.tool_calls is None
    # the call and its result went back into the prompt
    alone = call(client, tool_choice="none", max_tokens=1)
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 15


@pytest.mark.parametrize("max_tokens", [4, 12, 20, 26, 40])
@pytest.mark.parametrize("tool_choice", [
    "required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_calls_at_tiny_max_tokens_are_never_partial(client, tool_choice, max_tokens):
    """A call either completes (closed in time) or none is made ("length", no content)."""
    r = call(client, tool_choice=tool_choice, parallel_tool_calls=False, max_tokens=max_tokens)
    choice = r.choices[0]
    assert r.usage.completion_tokens <= max_tokens
    if choice.finish_reason == "length":
        assert choice.message.tool_calls is None and choice.message.content is None
    else:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert len(choice.message.tool_calls) == 1
        assert_valid_calls(choice.message)
    content, calls, finish = streamed(client, tool_choice=tool_choice,
                                      parallel_tool_calls=False, max_tokens=max_tokens)
    assert (content, finish) == (choice.message.content, choice.finish_reason)
    assert calls == [(c.function.name, c.function.arguments)
                     for c in choice.message.tool_calls or []]


REPORT = {"type": "object", "properties": {"city": {"type": "string"},
                                           "summary": {"type": "string", "maxLength": 40}},
          "required": ["city", "summary"], "additionalProperties": False}
REPORT_FORMAT = {"type": "json_schema", "json_schema": {"name": "report", "schema": REPORT}}


@pytest.mark.parametrize("tool_choice", [
    "auto", "required", "none", {"type": "function", "function": {"name": "get_time"}}])
@pytest.mark.parametrize("question", [
    "What is the weather like in Paris right now?",
    "Reply with a JSON report about Paris: its name and a one-line summary."])
def test_tools_with_a_response_format(client, tool_choice, question):
    """OpenAI's combination: the model either calls tools or answers in the schema; calls
    only for "required" and a named function, the schema only for "none"."""
    messages = [{"role": "user", "content": question}]
    r = call(client, messages=messages, tool_choice=tool_choice, response_format=REPORT_FORMAT,
             max_tokens=80)
    msg, finish = r.choices[0].message, r.choices[0].finish_reason
    assert_valid_calls(msg)
    if msg.tool_calls:
        assert tool_choice != "none" and msg.content is None and finish == "tool_calls"
    else:
        assert tool_choice in ("auto", "none") and finish == "stop"
        jsonschema.validate(json.loads(msg.content), REPORT)
    content, calls, streamed_finish = streamed(client, messages=messages,
                                               tool_choice=tool_choice,
                                               response_format=REPORT_FORMAT, max_tokens=80)
    assert content == msg.content and streamed_finish == finish
    assert calls == [(c.function.name, c.function.arguments) for c in msg.tool_calls or []]


def test_structured_outputs_with_tools_is_still_refused(client):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        call(client, extra_body={"structured_outputs": {"regex": "a+"}})
    assert e.value.body["param"] == "structured_outputs"
