"""`/v1/responses` (OpenAI Responses API).

Protocol tests run the real API layer (prompt, tool grammar, parser, events) over a scripted
engine; tests on the real embedded model check that outputs are valid by construction, and
one goes through the official openai client against a live server.
"""

from __future__ import annotations

import copy
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
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": WEATHER_SCHEMA, "strict": True}
TIME = {"type": "function", "name": "get_time", "description": "Local time in a timezone",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
                       "required": ["timezone"]}}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME["parameters"]}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"], "additionalProperties": False}


def assemble(events: list[tuple[str, dict]]) -> list[dict]:
    """The output items a stream's events build, each checked against its `done` item."""
    items: dict[int, dict] = {}
    for name, e in events:
        if name == "response.output_item.added":
            items[e["output_index"]] = copy.deepcopy(e["item"])
        elif name == "response.content_part.added":
            items[e["output_index"]]["content"].append(copy.deepcopy(e["part"]))
        elif name in ("response.output_text.delta", "response.reasoning_text.delta"):
            items[e["output_index"]]["content"][e["content_index"]]["text"] += e["delta"]
        elif name == "response.function_call_arguments.delta":
            items[e["output_index"]]["arguments"] += e["delta"]
        elif name == "response.output_item.done":
            built = items[e["output_index"]]
            built["status"] = e["item"]["status"]
            assert built == e["item"]
    return [items[i] for i in sorted(items)]


def kinds(events: list[tuple[str, dict]]) -> list[str]:
    """Event names with runs of one delta kind shown once."""
    names = [name for name, _ in events]
    return [n for i, n in enumerate(names) if not (n.endswith(".delta") and names[i - 1] == n)]


def without_ids(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in items]


def check_stream(events: list[tuple[str, dict]]) -> dict:
    """The common rules of every stream; returns the final response."""
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    assert all(name == e["type"] for name, e in events)
    assert [n for n, _ in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0][1]["response"]["status"] == "in_progress"
    final = events[-1][1]["response"]
    assert events[-1][0] == f"response.{final['status']}"
    assert assemble(events) == final["output"]
    return final


def create(c, stream: bool = False, **body):
    r = c.post("/v1/responses", json={"model": "", **body, "stream": stream})
    assert r.status_code == 200, r.text
    return parse_named_sse(r.text) if stream else r.json()


# -- the API layer over a scripted engine ---------------------------------------------------


def test_text_response_shape_and_stream(scripted_app, scripted_engine):
    from openai.types.responses import Response

    c = scripted_app()
    scripted_engine.script("Paris is lovely in spring.", "Paris is lovely in spring.")
    body = create(c, input="Tell me about Paris.", instructions="Be brief.",
                  metadata={"k": "v"}, temperature=0.5)
    r = Response.model_validate(body)
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "Paris is lovely in spring."
    assert body["output"][0]["type"] == "message" and body["output"][0]["role"] == "assistant"
    assert body["instructions"] == "Be brief." and body["metadata"] == {"k": "v"}
    assert body["temperature"] == 0.5 and body["store"] is True
    u = body["usage"]
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"] and u["output_tokens"] > 0
    assert scripted_engine.last_prompt().startswith("<|im_start|>system\nBe brief.")
    events = create(c, stream=True, input="Tell me about Paris.", instructions="Be brief.")
    assert kinds(events) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert sum(n == "response.output_text.delta" for n, _ in events) > 1
    final = check_stream(events)
    assert without_ids(final["output"]) == without_ids(body["output"])
    assert final["usage"] == body["usage"]


def test_function_call_items_and_stream(scripted_app, scripted_engine):
    c = scripted_app()
    scripted_engine.script(f"Let me look. {CALL_TEXT}", f"Let me look. {CALL_TEXT}")
    body = create(c, input="Weather in Paris?", tools=[WEATHER, TIME])
    message, call = body["output"]
    assert message["content"][0]["text"] == "Let me look."
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert call["call_id"].startswith("call_") and call["status"] == "completed"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert body["tools"][0]["name"] == "get_weather" and body["tool_choice"] == "auto"
    events = create(c, stream=True, input="Weather in Paris?", tools=[WEATHER, TIME])
    names = kinds(events)
    assert names[-5:] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done",
                          "response.output_item.done", "response.completed"]
    done = next(e for n, e in events if n == "response.function_call_arguments.done")
    assert done["arguments"] == call["arguments"] and done["name"] == "get_weather"
    assert without_ids(check_stream(events)["output"]) == without_ids(body["output"])


def test_tool_choice_and_text_format_reach_the_grammar(scripted_app, scripted_engine):
    c = scripted_app()
    for choice, mode in [("required", "required"), ({"type": "function", "name": "get_time"},
                                                     "named"), ("none", "none")]:
        scripted_engine.script(CALL_TEXT)
        create(c, input="Weather?", tools=[WEATHER, TIME], tool_choice=choice,
               parallel_tool_calls=False)
        spec = scripted_engine.requests[-1][1].structured_outputs
        if mode == "none":
            assert "get_weather" not in scripted_engine.last_prompt()
        else:
            assert spec.grammar is not None and "{0," not in spec.grammar
            assert ("get_weather" in spec.grammar) == (mode == "required")
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    scripted_engine.script('{"name": "Ann", "age": 3}')
    body = create(c, input="A person", text={"format": fmt})
    assert scripted_engine.requests[-1][1].structured_outputs.json is not None
    assert body["text"]["format"]["name"] == "person"
    scripted_engine.script('{"name": "Ann", "age": 3}')
    create(c, input="A person", text={"format": fmt}, tools=[WEATHER])
    assert "%json" in scripted_engine.requests[-1][1].structured_outputs.grammar


def test_incomplete_at_max_output_tokens(scripted_app, scripted_engine):
    c = scripted_app()
    long = "one two three four five six seven eight nine ten"
    scripted_engine.script(long, long)
    body = create(c, input="Count", max_output_tokens=4)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["usage"]["output_tokens"] == 4
    events = create(c, stream=True, input="Count", max_output_tokens=4)
    assert events[-1][0] == "response.incomplete"
    assert check_stream(events)["output"][0]["status"] == "incomplete"


def test_input_items_become_the_conversation(scripted_app, scripted_engine):
    c = scripted_app()
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Weather in "},
                     {"type": "input_text", "text": "Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "content": [{"type": "reasoning_text", "text": "I should call the tool."}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "21 degrees"},
    ]
    create(c, input=items, tools=[WEATHER])
    prompt = scripted_engine.last_prompt()
    order = ["Answer in French.", "Weather in Paris?", "Checking.\n<tool_call>",
             '"arguments": {"city": "Paris"}', "<tool_response>\n21 degrees\n</tool_response>"]
    positions = [prompt.index(text) for text in order]
    assert positions == sorted(positions)


def test_previous_response_survives_a_new_app(scripted_app, scripted_engine, tmp_path):
    db = str(tmp_path / "conversations.sqlite3")
    scripted_engine.script("The capital is Paris.")
    first = create(scripted_app(db), input="What is the capital of France?")
    # A new app over the same file (as after a restart) knows the response.
    c = scripted_app(db)
    stored = c.get(f"/v1/responses/{first['id']}")
    assert stored.status_code == 200 and stored.json() == first
    scripted_engine.script("About two million.")
    second = create(c, input="How many people live there?",
                    previous_response_id=first["id"])
    assert second["previous_response_id"] == first["id"]
    prompt = scripted_engine.last_prompt()
    assert prompt.index("capital of France?") < prompt.index("The capital is Paris.") \
        < prompt.index("How many people")
    scripted_engine.script("Yes.")
    events = create(c, stream=True, input="Sure?", previous_response_id=second["id"])
    third = check_stream(events)
    assert c.get(f"/v1/responses/{third['id']}").json() == third
    assert "About two million." in scripted_engine.last_prompt()
    deleted = c.delete(f"/v1/responses/{first['id']}")
    assert deleted.json() == {"id": first["id"], "object": "response.deleted", "deleted": True}
    for r in (c.get(f"/v1/responses/{first['id']}"), c.delete(f"/v1/responses/{first['id']}")):
        assert r.status_code == 404 and r.json()["error"]["param"] == "response_id"
    missing = c.post("/v1/responses", json={"input": "x", "previous_response_id": first["id"]})
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "previous_response_id"
    unstored = create(c, input="Do not keep this.", store=False)
    assert unstored["store"] is False
    assert c.get(f"/v1/responses/{unstored['id']}").status_code == 404


@pytest.mark.parametrize("fields, param", [
    ({"input": None}, "input"),
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "string"}}]},
     "tools.0.parameters"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     "tool_choice.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "schema": PERSON}}}, "text.format.name"),
    ({"tools": [WEATHER],
      "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": 7}}}},
     "text.format.schema"),
    ({"input": [{"type": "input_image"}]}, "input.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input.0.content.0.type"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input.0.call_id"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
])
def test_bad_requests_are_400_naming_the_field(scripted_app, fields, param):
    r = scripted_app().post("/v1/responses", json={"model": "", "input": "hi", **fields})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"]


def test_unknown_model_is_404(scripted_app):
    r = scripted_app().post("/v1/responses", json={"model": "nope", "input": "hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_openai_client_against_a_live_server(live_scripted, scripted_engine):
    import openai

    client = openai.OpenAI(base_url=live_scripted + "/v1", api_key="none", max_retries=0)
    scripted_engine.script(CALL_TEXT, CALL_TEXT)
    r = client.responses.create(model="", input="Weather in Paris?", tools=[WEATHER],
                                tool_choice="required")
    call = r.output[0]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
    with client.responses.stream(model="", input="Weather in Paris?", tools=[WEATHER],
                                 tool_choice="required") as stream:
        names = [event.type for event in stream]
        final = stream.get_final_response()
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert final.output[0].arguments == call.arguments
    assert client.responses.retrieve(r.id).id == r.id
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


# -- the real embedded model ----------------------------------------------------------------


def post(server, **body) -> httpx.Response:
    return httpx.post(server.v1 + "/responses", json={"model": "", "temperature": 0, **body},
                      headers={"Authorization": f"Bearer {server.api_key}"}, timeout=300)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "name": "get_time"},
                                         "auto"])
def test_model_calls_are_valid_for_each_tool_choice(server, tool_choice):
    r = post(server, input="What is the weather like in Paris right now?",
             tools=[WEATHER, TIME], tool_choice=tool_choice, max_output_tokens=40,
             parallel_tool_calls=False)
    assert r.status_code == 200, r.text
    calls = [item for item in r.json()["output"] if item["type"] == "function_call"]
    if tool_choice != "auto":
        assert calls and r.json()["status"] == "completed"
    if isinstance(tool_choice, dict):
        assert [c["name"] for c in calls] == ["get_time"]
    for call in calls:
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_model_tool_choice_none_answers_in_text(server):
    r = post(server, input="What is the weather like in Paris?", tools=[WEATHER],
             tool_choice="none", max_output_tokens=12)
    assert [item["type"] for item in r.json()["output"]] == ["message"]


def test_model_json_schema_answer_validates_and_streams_the_same(server):
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    body = dict(input="Describe a person as JSON.", text={"format": fmt}, max_output_tokens=40)
    r = post(server, **body).json()
    assert r["status"] == "completed", r
    jsonschema.validate(json.loads(r["output"][0]["content"][0]["text"]), PERSON)
    streamed = check_stream(parse_named_sse(post(server, stream=True, **body).text))
    assert without_ids(streamed["output"]) == without_ids(r["output"])


def test_model_tools_with_a_response_format(server):
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    r = post(server, input="Tell me about a person.", tools=[WEATHER], text={"format": fmt},
             max_output_tokens=40).json()
    for item in r["output"]:
        if item["type"] == "function_call":
            jsonschema.validate(json.loads(item["arguments"]), WEATHER_SCHEMA)
        else:
            jsonschema.validate(json.loads(item["content"][0]["text"]), PERSON)


def test_reasoning_becomes_a_reasoning_item(qwen3_scripted_engine):
    from fastapi.testclient import TestClient

    from corral.api import ServerSettings, create_app

    engine = qwen3_scripted_engine
    c = TestClient(create_app(engine, ServerSettings(responses_db=":memory:")))
    text = f"<think>\nThe user wants a call.\n</think>\n\n{CALL_TEXT}"
    engine.script(text, text)
    body = create(c, input="Weather in Paris?", tools=[WEATHER], reasoning={"effort": "low"})
    reasoning, call = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == []
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "The user wants a call."}]
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert body["reasoning"]["effort"] == "low"
    events = create(c, stream=True, input="Weather in Paris?", tools=[WEATHER])
    assert kinds(events)[2:8] == [
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.content_part.done", "response.output_item.done"]
    assert without_ids(check_stream(events)["output"]) == without_ids(body["output"])
    # Sent back, the reasoning item is the next assistant turn's reasoning.
    create(c, input=[{"role": "user", "content": "Weather in Paris?"}, *body["output"],
                     {"type": "function_call_output", "call_id": call["call_id"],
                      "output": "sunny"}], tools=[WEATHER])
    assert "The user wants a call." in engine.last_prompt()
