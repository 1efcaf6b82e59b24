"""`/v1/messages` (Anthropic Messages API).

Protocol tests run the real API layer (prompt, tool grammar, parser, events) over a scripted
engine; tests on the real embedded model check that tool inputs are valid by construction,
and one goes through the official anthropic client against a live server.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from .named_sse import parse_named_sse

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": WEATHER_SCHEMA}
TIME = {"name": "get_time", "description": "Local time in a timezone",
        "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}},
                         "required": ["timezone"]}}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME["input_schema"]}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]


def assemble(events: list[tuple[str, dict]]) -> dict:
    """The message a stream's events build."""
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    assert all(name == e["type"] for name, e in events)
    message = json.loads(json.dumps(events[0][1]["message"]))
    partial: dict[int, str] = {}
    for name, e in events[1:]:
        if name == "content_block_start":
            assert e["index"] == len(message["content"])
            message["content"].append(dict(e["content_block"]))
        elif name == "content_block_delta":
            block, delta = message["content"][e["index"]], e["delta"]
            if delta["type"] == "input_json_delta":
                partial[e["index"]] = partial.get(e["index"], "") + delta["partial_json"]
            else:
                key = {"text_delta": "text", "thinking_delta": "thinking"}[delta["type"]]
                block[key] += delta[key]
        elif name == "content_block_stop" and e["index"] in partial:
            message["content"][e["index"]]["input"] = json.loads(partial[e["index"]])
        elif name == "message_delta":
            message.update(e["delta"])
            message["usage"].update(e["usage"])
    return message


def without_ids(message: dict) -> dict:
    content = [{k: v for k, v in b.items() if k != "id"} for b in message["content"]]
    return {**{k: v for k, v in message.items() if k != "id"}, "content": content}


def create(c, stream: bool = False, **body):
    body = {"model": "", "max_tokens": 100, "messages": ASK, **body, "stream": stream}
    r = c.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    return parse_named_sse(r.text) if stream else r.json()


# -- the API layer over a scripted engine ---------------------------------------------------


def test_text_message_shape_and_stream(scripted_app, scripted_engine):
    from anthropic.types import Message

    c = scripted_app()
    scripted_engine.script("It is sunny in Paris today.", "It is sunny in Paris today.")
    body = create(c, system="Be brief.", metadata={"user_id": "u1"}, temperature=0.2)
    m = Message.model_validate(body)
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == \
        "It is sunny in Paris today."
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens > 10 and m.usage.output_tokens > 0
    assert scripted_engine.last_prompt().startswith("<|im_start|>system\nBe brief.")
    events = create(c, stream=True, system="Be brief.")
    names = [n for i, (n, _) in enumerate(events) if n != events[i - 1][0]]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    assert sum(n == "content_block_delta" for n, _ in events) > 1
    assert events[0][1]["message"]["usage"]["input_tokens"] == body["usage"]["input_tokens"]
    assert without_ids(assemble(events)) == without_ids(body)


def test_tool_use_blocks_and_stream(scripted_app, scripted_engine):
    from anthropic.types import Message

    c = scripted_app()
    scripted_engine.script(f"Let me look. {CALL_TEXT}", f"Let me look. {CALL_TEXT}")
    body = create(c, tools=[WEATHER, TIME])
    m = Message.model_validate(body)
    assert [b.type for b in m.content] == ["text", "tool_use"]
    use = m.content[1]
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    assert use.input == {"city": "Paris"} and m.stop_reason == "tool_use"
    events = create(c, stream=True, tools=[WEATHER, TIME])
    start = [e for n, e in events if n == "content_block_start"][1]["content_block"]
    assert start == {"type": "tool_use", "id": start["id"], "name": "get_weather", "input": {}}
    deltas = [e["delta"] for n, e in events if n == "content_block_delta" and e["index"] == 1]
    assert {d["type"] for d in deltas} == {"input_json_delta"} and len(deltas) > 1
    assert without_ids(assemble(events)) == without_ids(body)


def test_stop_reasons(scripted_app, scripted_engine):
    c = scripted_app()
    scripted_engine.script("one two three four five six seven eight")
    body = create(c, max_tokens=3)
    assert body["stop_reason"] == "max_tokens" and body["usage"]["output_tokens"] == 3
    scripted_engine.script("Paris. END more text", "Paris. END more text")
    body = create(c, stop_sequences=["END"])
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] == "END"
    assert body["content"][0]["text"] == "Paris. "
    events = create(c, stream=True, stop_sequences=["END"])
    assert [e for n, e in events if n == "message_delta"][0]["delta"] == {
        "stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_blocks_become_the_conversation(scripted_app, scripted_engine):
    c = scripted_app()
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": [{"type": "text", "text": "21 degrees"}]},
            {"type": "text", "text": "And tomorrow?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no data",
             "is_error": True}]},
    ]
    create(c, messages=messages, tools=[WEATHER],
           system=[{"type": "text", "text": "You are a weather bot."}])
    prompt = scripted_engine.last_prompt()
    order = ["You are a weather bot.", "Weather in Paris?", "Checking.\n<tool_call>",
             "<tool_response>\n21 degrees\n</tool_response>", "And tomorrow?",
             "<tool_response>\nError: no data\n</tool_response>"]
    positions = [prompt.index(text) for text in order]
    assert positions == sorted(positions)


def test_tool_choice_reaches_the_grammar(scripted_app, scripted_engine):
    c = scripted_app()
    for choice in [{"type": "any", "disable_parallel_tool_use": True},
                   {"type": "tool", "name": "get_time"}, {"type": "none"},
                   {"type": "auto"}]:
        scripted_engine.script(CALL_TEXT)
        create(c, tools=[WEATHER, TIME], tool_choice=choice)
        spec = scripted_engine.requests[-1][1].structured_outputs
        if choice["type"] == "none":
            assert spec is None or "get_weather" not in spec.grammar
            assert "get_weather" not in scripted_engine.last_prompt()
        elif choice["type"] == "auto":
            assert "PLAIN" in spec.grammar and "{0,15}" in spec.grammar
        else:
            assert "PLAIN" not in spec.grammar and "{0," not in spec.grammar
            assert ("get_weather" in spec.grammar) == (choice["type"] == "any")


def test_count_tokens_matches_the_message_usage(scripted_app, scripted_engine):
    c = scripted_app()
    scripted_engine.script("Sunny.")
    body = {"model": "", "messages": ASK, "tools": [WEATHER], "system": "Be brief."}
    usage = create(c, max_tokens=10, **body)["usage"]
    r = c.post("/v1/messages/count_tokens", json=body)
    assert r.status_code == 200 and r.json() == {"input_tokens": usage["input_tokens"]}
    bare = c.post("/v1/messages/count_tokens", json={"model": "", "messages": ASK}).json()
    assert 0 < bare["input_tokens"] < usage["input_tokens"]


@pytest.mark.parametrize("fields, status, kind, named", [
    ({"max_tokens": None}, 400, "invalid_request_error", "max_tokens"),
    ({"messages": []}, 400, "invalid_request_error", "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, 400, "invalid_request_error",
     "messages.0.role"),
    ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, 400,
     "invalid_request_error", "tools.0.input_schema"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, 400, "invalid_request_error",
     "tools.0.type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, 400,
     "invalid_request_error", "tool_choice.name"),
    ({"tool_choice": {"type": "any"}}, 400, "invalid_request_error", "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, 400,
     "invalid_request_error", "messages.0.content.0.type"),
    ({"messages": [*ASK, {"role": "assistant", "content": "It is"}]}, 400,
     "invalid_request_error", "messages"),
    ({"temperature": 1.5}, 400, "invalid_request_error", "temperature"),
    ({"model": "claude-nope"}, 404, "not_found_error", "claude-nope"),
])
def test_errors_in_anthropic_shape(scripted_app, fields, status, kind, named):
    body = {"model": "", "max_tokens": 10, "messages": ASK, **fields}
    r = scripted_app().post("/v1/messages", json={k: v for k, v in body.items()
                                                  if v is not None})
    assert r.status_code == status, r.text
    assert r.json()["type"] == "error" and set(r.json()) == {"type", "error"}
    assert r.json()["error"]["type"] == kind and named in r.json()["error"]["message"]


def test_auth_errors_in_anthropic_shape(scripted_app):
    c = scripted_app(api_key="sekret")
    r = c.post("/v1/messages", json={}, headers={"x-api-key": "wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = c.post("/v1/messages/count_tokens", headers={"x-api-key": "sekret"},
               json={"model": "", "messages": ASK})
    assert r.status_code == 200
    assert "error" in c.post("/v1/responses", json={}).json()  # OpenAI's shape elsewhere


def test_anthropic_client_against_a_live_server(live_scripted, scripted_engine):
    import anthropic

    client = anthropic.Anthropic(base_url=live_scripted, api_key="none", max_retries=0)
    scripted_engine.script(CALL_TEXT, CALL_TEXT)
    m = client.messages.create(model="", max_tokens=100, messages=ASK, tools=[WEATHER],
                               tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use" and m.content[0].input == {"city": "Paris"}
    with client.messages.stream(model="", max_tokens=100, messages=ASK, tools=[WEATHER],
                                tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == m.content[0].input and final.stop_reason == "tool_use"
    count = client.messages.count_tokens(model="", messages=ASK, tools=[WEATHER])
    assert count.input_tokens == m.usage.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-nope", max_tokens=5, messages=ASK)


# -- the real embedded model ----------------------------------------------------------------


def post(server, **body) -> httpx.Response:
    return httpx.post(server.v1 + "/messages",
                      json={"model": "", "temperature": 0, "max_tokens": 40, "messages": ASK,
                            **body},
                      headers={"x-api-key": server.api_key}, timeout=300)


@pytest.mark.parametrize("tool_choice", [
    {"type": "any", "disable_parallel_tool_use": True}, {"type": "tool", "name": "get_time"},
    {"type": "auto", "disable_parallel_tool_use": True}])
def test_model_tool_inputs_are_valid_for_each_tool_choice(server, tool_choice):
    r = post(server, tools=[WEATHER, TIME], tool_choice=tool_choice)
    assert r.status_code == 200, r.text
    uses = [b for b in r.json()["content"] if b["type"] == "tool_use"]
    if tool_choice["type"] != "auto":
        assert uses and r.json()["stop_reason"] == "tool_use"
    if tool_choice["type"] == "tool":
        assert [u["name"] for u in uses] == ["get_time"]
    for use in uses:
        jsonschema.validate(use["input"], SCHEMAS[use["name"]])


def test_model_stream_joins_to_the_message(server):
    body = dict(tools=[WEATHER], tool_choice={"type": "any", "disable_parallel_tool_use": True})
    full = post(server, **body).json()
    events = parse_named_sse(post(server, stream=True, **body).text)
    assert without_ids(assemble(events)) == without_ids(full)
    assert post(server, tools=[WEATHER], tool_choice={"type": "none"},
                max_tokens=10).json()["content"][0]["type"] == "text"


def test_reasoning_becomes_a_thinking_block(qwen3_scripted_engine):
    from anthropic.types import Message
    from fastapi.testclient import TestClient

    from corral.api import ServerSettings, create_app

    engine = qwen3_scripted_engine
    c = TestClient(create_app(engine, ServerSettings(responses_db=":memory:")))
    text = "<think>\nA short answer will do.\n</think>\n\nIt is sunny."
    engine.script(text, text)
    body = create(c)
    m = Message.model_validate(body)
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "A short answer will do." and m.content[1].text == \
        "It is sunny."
    events = create(c, stream=True)
    assert [e["delta"]["type"] for n, e in events if n == "content_block_delta"][0] == \
        "thinking_delta"
    assert without_ids(assemble(events)) == without_ids(body)
