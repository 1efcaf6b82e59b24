"""Error handler, auth and body limit on a real FastAPI app (no engine needed)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from corral.api.chat_protocol import ChatCompletionRequest
from corral.api.errors import APIError, install_error_handlers
from corral.api.middleware import APIKeyMiddleware, BodyLimitMiddleware


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    seen: list[int] = []
    install_error_handlers(app, on_error=seen.append)
    app.add_middleware(BodyLimitMiddleware, max_bytes=2000)
    app.add_middleware(APIKeyMiddleware, api_key="sekret")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest) -> dict:
        req.check()
        return {"n": len(req.messages)}

    @app.get("/v1/boom")
    async def boom() -> dict:
        raise RuntimeError("secret detail /etc/passwd")

    @app.get("/health")
    async def health() -> dict:
        return {}

    with TestClient(app, raise_server_exceptions=False) as c:
        c.seen = seen
        yield c


AUTH = {"Authorization": "Bearer sekret"}


def assert_error(r, status, param=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    return body["error"]


def test_validation_errors_are_400_with_field_path(client):
    r = client.post("/v1/chat/completions", headers=AUTH,
                    json={"messages": [{"role": "user", "content": 5}]})
    err = assert_error(r, 400, "messages.0.content")
    assert err["type"] == "invalid_request_error"
    assert_error(client.post("/v1/chat/completions", headers=AUTH, json={}), 400, "messages")
    assert_error(client.post("/v1/chat/completions", headers=AUTH,
                             json={"messages": [{"role": "user", "content": "x"}],
                                   "temperature": "hot"}), 400, "temperature")
    r = client.post("/v1/chat/completions", headers={**AUTH, "content-type": "application/json"},
                    content=b"{not json")
    assert_error(r, 400)


def test_api_error_from_route(client):
    r = client.post("/v1/chat/completions", headers=AUTH,
                    json={"messages": [{"role": "user", "content": "x"}],
                          "stream_options": {"include_usage": True}})
    assert_error(r, 400, "stream_options")


def test_auth_on_v1_only(client):
    err = assert_error(client.get("/v1/boom"), 401)
    assert err["code"] == "invalid_api_key"
    assert_error(client.get("/v1/boom", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(client.get("/v1/boom", headers={"x-api-key": "wrong"}), 401)
    assert_error(client.get("/v1/boom", headers={"x-api-key": ""}), 401)
    # Anthropic clients send the key as x-api-key: it passes the check (then the route's 500).
    assert client.get("/v1/boom", headers={"x-api-key": "sekret"}).status_code == 500
    assert client.get("/health").status_code == 200


def test_unexpected_errors_hide_details(client):
    r = client.get("/v1/boom", headers=AUTH)
    err = assert_error(r, 500)
    assert err["type"] == "server_error" and "passwd" not in r.text and "Traceback" not in r.text


def test_body_limit(client):
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    err = assert_error(client.post("/v1/chat/completions", headers=AUTH, json=big), 413)
    assert "2000" in err["message"]

    def chunks():
        for _ in range(10):
            yield b" " * 500

    r = client.post("/v1/chat/completions",
                    headers={**AUTH, "content-type": "application/json"}, content=chunks())
    assert_error(r, 413)
    ok = client.post("/v1/chat/completions", headers=AUTH,
                     json={"messages": [{"role": "user", "content": "x" * 100}]})
    assert ok.status_code == 200 and ok.json() == {"n": 1}


def test_unknown_route_is_an_error_object(client):
    err = assert_error(client.get("/v1/nothing-here", headers=AUTH), 404)
    assert err["code"] == "not_found"


def test_param_error_names_its_field():
    from corral.grammars.param_error import ParamError

    err = APIError.from_value_error(ParamError("tools[0].function.name", "bad"))
    assert err.param == "tools[0].function.name" and err.status == 400
    assert err.message == "tools[0].function.name: bad"
    assert APIError.from_value_error(ParamError("x", "bad"), param="response_format").param \
        == "response_format"
    # The field is data: a message that merely looks like "field: ..." names none.
    assert APIError.from_value_error(ValueError("tools[0].function.name: bad")).param is None


def test_error_after_stream_began_is_an_event_then_done():
    import asyncio
    import json

    from corral.api.sse import DONE, guarded_stream, sse_event

    async def events():
        yield sse_event({"n": 1})
        raise APIError("structured_outputs: matcher failed", param="structured_outputs")

    async def collect():
        return [e async for e in guarded_stream(events())]

    out = asyncio.run(collect())
    assert out[0] == b'data: {"n":1}\n\n' and out[-1] == DONE == b"data: [DONE]\n\n"
    err = json.loads(out[1][len("data: "):])["error"]
    assert err["param"] == "structured_outputs" and err["type"] == "invalid_request_error"
