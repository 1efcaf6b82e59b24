"""Agent frameworks, unmodified, against a running `corral serve` on the embedded model.

Each test runs the framework's example from `examples/` (its usual setup) and holds the
server to what it promises, whatever the small model's judgement: calls that name a real
tool with arguments valid against its schema, typed outputs that parse. A framework that is
not installed is skipped (`make test` installs them).
"""

from __future__ import annotations

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
