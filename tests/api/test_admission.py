"""Overload and deadlines: `max_waiting` refuses with 429 + Retry-After, `request_timeout`
aborts with 504 (an error event in a stream), and tool calls are counted in /metrics."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from corral.api import ServerSettings, create_app
from corral.api.tool_call_audit import ToolCallAudit

from .scripted_engine import ScriptedEngine

CHAT = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}]}


class SlowEngine(ScriptedEngine):
    """A scripted engine whose requests wait for `gate` before their first output and
    take `step_s` per output after it; records aborted request ids."""

    def __init__(self, tokenizer, step_s: float = 0.0) -> None:
        super().__init__(tokenizer)
        self.gate = asyncio.Event()
        self.step_s = step_s
        self.aborted: list[str] = []

    async def generate(self, prompt, params, request_id):
        await self.gate.wait()
        async for out in super().generate(prompt, params, request_id):
            await asyncio.sleep(self.step_s)
            yield out

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


@pytest.fixture
def slow_engine(scripted_engine):
    return SlowEngine(scripted_engine.tokenizer)


def _client(engine, app=None, **settings) -> httpx.AsyncClient:
    app = app or create_app(engine, ServerSettings(responses_db=":memory:", **settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def _until(condition, timeout: float = 30.0) -> None:
    """Wait (on the event loop) until `condition()` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def test_waiting_requests_beyond_the_bound_get_429(slow_engine):
    async def run():
        app = create_app(slow_engine, ServerSettings(responses_db=":memory:", max_waiting=2))
        admission = app.state.corral.admission
        async with _client(slow_engine, app) as client:
            sent = [asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
                    for _ in range(5)]
            # All five arrived (two admitted and waiting, three refused); none has an output.
            await _until(lambda: admission.num_waiting + admission.num_refused == 5)
            slow_engine.gate.set()
            return await asyncio.gather(*sent)

    responses = asyncio.run(run())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 429, 429, 429]
    refused = [r for r in responses if r.status_code == 429]
    for r in refused:
        assert r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"


def test_a_request_that_started_no_longer_counts_as_waiting(slow_engine):
    async def run():
        slow_engine.gate.set()
        async with _client(slow_engine, max_waiting=1) as client:
            first = await client.post("/v1/chat/completions", json=CHAT)
            second = await client.post("/v1/chat/completions", json=CHAT)
            return first, second

    first, second = asyncio.run(run())
    assert first.status_code == second.status_code == 200


def test_anthropic_route_refuses_in_its_own_shape(slow_engine):
    body = {"model": "SmolLM2-135M-Instruct", "max_tokens": 16,
            "messages": [{"role": "user", "content": "Hi"}]}

    async def run():
        async with _client(slow_engine, max_waiting=0) as client:
            return await client.post("/v1/messages", json=body)

    r = asyncio.run(run())
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_a_request_past_its_timeout_is_aborted_with_504(slow_engine):
    slow_engine.step_s = 0.2
    slow_engine.script("one two three four five six seven eight nine ten " * 4)

    async def run():
        slow_engine.gate.set()
        async with _client(slow_engine, request_timeout=0.5) as client:
            return await client.post("/v1/chat/completions", json=CHAT)

    r = asyncio.run(run())
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "request_timeout"
    assert len(slow_engine.aborted) == 1  # its engine request was aborted


def test_a_stream_past_its_timeout_ends_with_an_error_event(slow_engine):
    slow_engine.step_s = 0.3
    slow_engine.script("one two three four five six seven eight nine ten " * 4)

    async def run():
        slow_engine.gate.set()
        async with _client(slow_engine, request_timeout=1.5) as client:
            return await client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    r = asyncio.run(run())
    assert r.status_code == 200
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["error"]["code"] == "request_timeout"
    assert any(json.loads(e).get("choices") for e in events[:-2])  # text came first
    assert len(slow_engine.aborted) == 1


def test_fast_requests_finish_under_a_timeout(slow_engine):
    async def run():
        slow_engine.gate.set()
        async with _client(slow_engine, request_timeout=30) as client:
            return await client.post("/v1/chat/completions", json=CHAT)

    r = asyncio.run(run())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    assert slow_engine.aborted == []


@pytest.mark.parametrize(("field", "value"), [("max_waiting", -1), ("request_timeout", 0),
                                              ("shutdown_timeout", -1)])
def test_bad_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        ServerSettings(**{field: value})


def test_tool_call_outcomes():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    seen: list[str] = []
    audit = ToolCallAudit(tools, seen.append)
    assert audit.outcome("get_weather", '{"city": "Paris"}') == "valid"
    assert audit.outcome("get_time", '{"city": "Paris"}') == "unknown_tool"
    assert audit.outcome("get_weather", '{"town": "Paris"}') == "invalid_arguments"
    assert audit.outcome("get_weather", '{"city": ') == "invalid_arguments"


def test_tool_calls_are_counted_in_metrics(scripted_app, scripted_engine):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    client = scripted_app()
    scripted_engine.script(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    for _ in range(2):
        r = client.post("/v1/chat/completions", json={
            **CHAT, "tools": tools, "constrain_tool_calls": False})
        assert r.status_code == 200, r.text
    metrics = client.get("/metrics").text

    def count(outcome: str) -> float:
        for line in metrics.splitlines():
            if line.startswith("corral_tool_calls_total{") and f'outcome="{outcome}"' in line:
                return float(line.split()[-1])
        raise AssertionError(f"no series for {outcome}")

    assert count("valid") == 1 and count("unknown_tool") == 1
    assert count("invalid_arguments") == 0
