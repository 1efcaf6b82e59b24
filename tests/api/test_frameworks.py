"""Agent frameworks, unmodified, against a running `corral serve` on the embedded model.

Each test runs the framework's example from `examples/` (its usual setup) and holds the
server to what it promises, whatever the small model's judgement: calls that name a real
tool with arguments valid against its schema, typed outputs that parse. A framework that is
not installed is skipped (`make test` installs them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module", autouse=True)
def examples_on_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_openai_agents_sdk_tools_and_output_type(server, api):
    pytest.importorskip("agents")
    from openai_agents_sdk import Weather, run

    output, calls = run(api, base_url=server.v1, api_key=server.api_key)
    assert calls and all(isinstance(city, str) and city for city in calls)
    assert isinstance(output, Weather) and output.city


def test_langchain_tools_structured_output_and_streaming(server):
    pytest.importorskip("langchain_openai")
    from langchain_tools import Weather, run

    out = run(base_url=server.v1, api_key=server.api_key)
    for key in ("bind_tools", "stream"):
        calls = out[key].tool_calls
        assert calls and all(c["name"] == "get_weather" and isinstance(c["args"]["city"], str)
                             for c in calls), key
    for method in ("json_schema", "function_calling"):
        assert isinstance(out[method], Weather), method
    assert isinstance(out["json_mode"], dict)


@pytest.mark.parametrize("native", [True, False], ids=["native_output", "output_tool"])
def test_pydantic_ai_tools_and_output_type(server, native):
    pytest.importorskip("pydantic_ai")
    from pydantic_ai_agent import Weather, run

    output, calls = run(native, base_url=server.v1, api_key=server.api_key)
    assert isinstance(output, Weather) and output.city
    assert all(isinstance(city, str) for city in calls)


WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}},
                      "required": ["city"]}


def test_openai_sdk_two_turn_tool_conversation_over_responses(server):
    """A call, its output sent back by `previous_response_id`, then the answer, streamed:
    every turn parsed by the openai SDK's own types."""
    client = server.client()
    tools = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
              "parameters": WEATHER_PARAMETERS}]
    first = client.responses.create(model="", input="What is the weather in Paris?",
                                    tools=tools, tool_choice="required", temperature=0,
                                    max_output_tokens=64)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and all(c.name == "get_weather" and json.loads(c.arguments)["city"]
                         for c in calls)
    outputs = [{"type": "function_call_output", "call_id": c.call_id,
                "output": "Sunny and 24 C"} for c in calls]
    with client.responses.stream(model="", previous_response_id=first.id, input=outputs,
                                 tools=tools, tool_choice="none", temperature=0,
                                 max_output_tokens=32) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created"
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert final.output_text and not [i for i in final.output if i.type == "function_call"]


def test_anthropic_sdk_two_turn_tool_conversation(server):
    """A tool_use, its tool_result in the next user turn, then the answer, streamed: every
    turn parsed by the anthropic SDK's own types."""
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=server.base_url, api_key=server.api_key,
                                 max_retries=0)
    tools = [{"name": "get_weather", "description": "Weather in a city",
              "input_schema": WEATHER_PARAMETERS}]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(model="", max_tokens=64, messages=ask, tools=tools,
                                   tool_choice={"type": "any"},
                                   extra_body={"temperature": 0})
    uses = [block for block in first.content if block.type == "tool_use"]
    assert first.stop_reason == "tool_use" and uses and uses[0].input["city"]
    history = ask + [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                     {"role": "user", "content": [
                         {"type": "tool_result", "tool_use_id": u.id, "content": "Sunny"}
                         for u in uses]}]
    with client.messages.stream(model="", max_tokens=32, messages=history, tools=tools,
                                tool_choice={"type": "none"},
                                extra_body={"temperature": 0}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in final.content] == ["text"] and final.content[0].text
