"""Every error is an OpenAI error object with the right status (and no stack trace)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from .conftest import MAX_BODY_BYTES

MSG = [{"role": "user", "content": "hi"}]


def expect(exc_type, status, fn, param=None, code=None):
    with pytest.raises(exc_type) as e:
        fn()
    err = e.value
    assert err.status_code == status
    body = err.body
    assert set(body) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in body["message"]
    if param is not None:
        assert body["param"] == param, body
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.mark.parametrize("fields,param", [
    ({"temperature": 2.5}, "temperature"),
    ({"n": 200}, "n"),
    ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}},
      "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
])
def test_invalid_fields_are_400_naming_the_field(client, fields, param):
    args = {"model": "", "messages": MSG, "max_tokens": 2, **fields}
    expect(openai.BadRequestError, 400, lambda: client.chat.completions.create(**args), param)


def test_prompt_longer_than_context(client):
    long = [{"role": "user", "content": "word " * 3000}]
    body = expect(openai.BadRequestError, 400, lambda: client.chat.completions.create(
        model="", messages=long, max_tokens=2), code="context_length_exceeded")
    assert "maximum context length is 1024 tokens" in body["message"]
    expect(openai.BadRequestError, 400, lambda: client.completions.create(
        model="", prompt="word " * 3000, max_tokens=2), "prompt", "context_length_exceeded")


def test_unsupported_schema_keyword(client):
    schema = {"type": "object", "not": {"required": ["a"]}}
    body = expect(openai.BadRequestError, 400, lambda: client.chat.completions.create(
        model="", messages=MSG, max_tokens=2,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}),
        "response_format")
    assert "not" in body["message"]


def test_bad_grammar_names_line_and_column(client):
    grammar = 'start: "a" item\nitem: ::= oops\n'
    body = expect(openai.BadRequestError, 400, lambda: client.chat.completions.create(
        model="", messages=MSG, max_tokens=2,
        extra_body={"structured_outputs": {"grammar": grammar}}))
    assert body["param"].startswith("structured_outputs")
    assert "line 2" in body["message"] and "column" in body["message"]


def test_a_grammar_llguidance_would_loop_on_is_refused_and_the_server_lives(client):
    # llguidance forces "a" forever after "p" here, in native code that holds the GIL: the
    # request used to freeze the whole server.
    grammar = 'start: "p" A B | "q"\nA: /a+/\nB: /a/\n'
    body = expect(openai.BadRequestError, 400, lambda: client.chat.completions.create(
        model="", messages=MSG, max_tokens=4, timeout=60,
        extra_body={"structured_outputs": {"grammar": grammar}}))
    assert body["param"] == "structured_outputs.grammar"
    assert "A can hold the lexer forever" in body["message"]
    ok = client.chat.completions.create(model="", messages=MSG, max_tokens=2, timeout=60)
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_unknown_model_is_404(client):
    body = expect(openai.NotFoundError, 404, lambda: client.chat.completions.create(
        model="gpt-9", messages=MSG, max_tokens=2), "model", "model_not_found")
    assert "gpt-9" in body["message"]
    expect(openai.NotFoundError, 404, lambda: client.models.retrieve("gpt-9"))


def test_auth_required_on_every_v1_route(server):
    for key in ("", "wrong-key"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                             ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
                             ("GET", "/v1/grammars")]:
            r = httpx.request(method, server.v1[:-3] + path, headers=headers, json={})
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=server.v1, api_key="wrong-key", max_retries=0)
    expect(openai.AuthenticationError, 401, lambda: bad.models.list())
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_body_over_limit_is_413(server):
    r = httpx.post(server.v1 + "/chat/completions",
                   headers={"Authorization": f"Bearer {server.api_key}"},
                   json={"model": "", "messages": [{"role": "user",
                                                    "content": "x" * MAX_BODY_BYTES}]})
    assert r.status_code == 413
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_raw_sse_stream_format(server):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    body = {"model": "", "messages": MSG, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.v1 + "/chat/completions", headers=headers, json=body,
                      timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks].count(None) == len(chunks) - 1
    assert chunks[-1]["choices"][0]["delta"] == {}
