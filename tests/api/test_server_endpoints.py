"""Completions, embeddings, models, grammars, metrics and disconnect through the server."""

from __future__ import annotations

import json
import re
import sys
import time
import uuid

import httpx
import numpy as np
import openai
import pytest


def test_models_lists_chat_and_embedding_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"]
    assert client.models.retrieve("SmolLM2-135M-Instruct").object == "model"


def test_completions_prompt_major_choices_echo_and_logprobs(client):
    r = client.completions.create(model="", prompt=["The capital of France is", "1, 2, 3,"],
                                  max_tokens=5, temperature=0, n=2, logprobs=2)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy samples agree
    assert r.choices[0].text != r.choices[2].text
    for c in r.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) <= 5
        assert "".join(lp.tokens) == c.text
        assert lp.text_offset[0] == 0 and all(len(t) <= 2 for t in lp.top_logprobs)
    assert r.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in r.choices)
    echo = client.completions.create(model="", prompt="The capital of France is",
                                     max_tokens=5, temperature=0, echo=True)
    assert echo.choices[0].text == "The capital of France is" + r.choices[0].text
    chunks = list(client.completions.create(model="", prompt="The capital of France is",
                                            max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_completions_token_ids_and_regex(client):
    ids = [504, 3575, 282]
    r = client.completions.create(model="", prompt=ids, max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == 3
    r = client.completions.create(model="", prompt="My phone number is", max_tokens=20,
                                  temperature=0,
                                  extra_body={"structured_outputs": {"regex": r"\d{3}-\d{4}"}})
    assert re.fullmatch(r"\d{3}-\d{4}", r.choices[0].text), r.choices[0].text
    assert r.choices[0].finish_reason == "stop"


def test_completions_response_format(client):
    """`response_format` constrains /v1/completions as it does chat completions."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    r = client.completions.create(model="", prompt="A city and its population, as JSON:",
                                  max_tokens=40, temperature=0,
                                  extra_body={"response_format": fmt})
    value = json.loads(r.choices[0].text)
    assert set(value) == {"city", "population"} and isinstance(value["population"], int)
    r = client.completions.create(model="", prompt="Hi", max_tokens=1, temperature=0,
                                  extra_body={"response_format": {"type": "json_object"}})
    assert r.choices[0].text.startswith("{")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="", prompt="Hi", max_tokens=5, extra_body={
            "response_format": fmt, "structured_outputs": {"regex": "a+"}})
    assert e.value.body["param"] == "structured_outputs"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="", prompt="Hi", max_tokens=5, extra_body={
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "bad", "schema": {"type": "object", "minProperties": "two"}}}})
    assert e.value.body["param"].startswith("response_format")


def test_embeddings_paraphrases_are_closer(client):
    texts = ["A man is playing the guitar.", "Someone is strumming a guitar.",
             "The central bank raised interest rates."]
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384) and [d.index for d in r.data] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3 and v[0] @ v[1] > v[1] @ v[2] + 0.3
    assert r.usage.prompt_tokens == r.usage.total_tokens > 10
    b64 = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0],
                                   encoding_format="base64")
    import base64
    decoded = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    assert np.allclose(decoded, v[0], atol=1e-5)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="all-MiniLM-L6-v2", input="")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="SmolLM2-135M-Instruct", input="x")


def test_grammar_registration_and_use_by_name(server, client):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    grammar = 'start: answer\nanswer: "yes" | "no" | "maybe"\n'
    r = httpx.post(server.v1 + "/grammars", headers=headers,
                   json={"name": "yesno", "syntax": "lark", "definition": grammar})
    assert r.status_code == 201, r.text
    listed = httpx.get(server.v1 + "/grammars", headers=headers).json()["data"]
    assert "yesno" in [g["name"] for g in listed]
    msgs = [{"role": "user", "content": "Is the sky blue?"}]
    outs = client.chat.completions.create(
        model="", messages=msgs, max_tokens=5, temperature=1.0, n=3, seed=5,
        extra_body={"structured_outputs": {"grammar_name": "yesno"}})
    for c in outs.choices:
        assert c.message.content in ("yes", "no", "maybe") and c.finish_reason == "stop"
    bad = httpx.post(server.v1 + "/grammars", headers=headers,
                     json={"name": "broken", "syntax": "lark", "definition": "start: (\n"})
    assert bad.status_code == 400 and "line" in bad.json()["error"]["message"]
    assert bad.json()["error"]["param"] == "definition"
    assert bad.json()["error"]["message"].startswith("definition: ")
    misnamed = httpx.post(server.v1 + "/grammars", headers=headers,
                          json={"name": "no spaces", "syntax": "lark", "definition": grammar})
    assert misnamed.status_code == 400 and misnamed.json()["error"]["param"] == "name"
    assert httpx.delete(server.v1 + "/grammars/yesno", headers=headers).status_code == 200
    assert httpx.delete(server.v1 + "/grammars/yesno", headers=headers).status_code == 404
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="", messages=msgs, max_tokens=2,
                                       extra_body={"structured_outputs":
                                                   {"grammar_name": "yesno"}})
    assert "yesno" in e.value.body["message"]


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(server) -> str:
    r = httpx.get(server.base_url + "/metrics")
    assert r.status_code == 200
    return r.text


def test_metrics_move(server, client):
    before = scrape(server)
    client.chat.completions.create(model="", messages=[{"role": "user", "content": "Hi!"}],
                                   max_tokens=6, temperature=0)
    after = scrape(server)
    for name in ("corral_generation_tokens_total", "corral_prompt_tokens_total",
                 "corral_time_to_first_token_seconds_count",
                 "corral_e2e_request_latency_seconds_count",
                 "corral_request_success_total"):
        assert metric(after, name) > metric(before, name), name
    assert metric(after, "corral_inter_token_latency_seconds_count") >= \
        metric(before, "corral_inter_token_latency_seconds_count")
    if sys.platform == "linux":  # the API process's own CPU time, read from /proc
        assert metric(after, "process_cpu_seconds_total") > 0
    for name in ("corral_num_requests_running", "corral_num_requests_waiting",
                 "corral_kv_cache_usage_perc", "corral_prefix_cache_hit_rate",
                 "corral_num_preemptions_total", "corral_grammar_compile_seconds_count",
                 "corral_grammar_mask_seconds_count"):
        assert re.search(rf"^{name}", after, re.M), name


def test_grammar_compile_seconds_observes_a_new_schema(server, client):
    before = metric(scrape(server), "corral_grammar_compile_seconds_count")
    probe = f"probe_{uuid.uuid4().hex[:8]}"  # a schema this server has not compiled yet
    schema = {"type": "object", "properties": {probe: {"type": "integer"}},
              "required": [probe], "additionalProperties": False}
    client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "Give me a number."}], max_tokens=8,
        temperature=0, response_format={"type": "json_schema",
                                         "json_schema": {"name": "probe", "schema": schema}})
    after = metric(scrape(server), "corral_grammar_compile_seconds_count")
    assert after >= 1 and after > before


def test_client_disconnect_aborts_and_frees_blocks(server):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    body = {"model": "", "prompt": "Once upon a time", "max_tokens": 900, "stream": True,
            "ignore_eos": True, "temperature": 1.0}
    with httpx.stream("POST", server.v1 + "/completions", headers=headers, json=body,
                      timeout=60) as r:
        lines = r.iter_lines()  # not closed until the block ends: the client stays connected
        events = 0
        while events < 3:
            line = next(lines)
            if line.startswith("data: {"):
                json.loads(line[6:])
                events += 1
        busy = scrape(server)
    assert metric(busy, "corral_num_requests_running") == 1
    assert metric(busy, "corral_kv_cache_usage_perc") > 0
    deadline = time.monotonic() + 15
    while True:
        idle = scrape(server)
        if metric(idle, "corral_num_requests_running") == 0 and \
                metric(idle, "corral_kv_cache_usage_perc") == 0:
            break
        assert time.monotonic() < deadline, idle
        time.sleep(0.2)
    generated = metric(idle, "corral_generation_tokens_total")
    time.sleep(1.0)
    assert metric(scrape(server), "corral_generation_tokens_total") == generated


def test_non_streamed_request_is_aborted_when_the_client_leaves(server):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    body = {"model": "", "prompt": "Once upon a time", "max_tokens": 900, "ignore_eos": True}
    before = metric(scrape(server), "corral_generation_tokens_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.v1 + "/completions", headers=headers, json=body, timeout=2.0)
    deadline = time.monotonic() + 15
    while metric(scrape(server), "corral_num_requests_running") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    generated = metric(scrape(server), "corral_generation_tokens_total") - before
    assert 0 < generated < 900
    assert metric(scrape(server), "corral_kv_cache_usage_perc") == 0


def test_tokenize_detokenize_and_version(server, client):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    r = httpx.post(server.base_url + "/tokenize", headers=headers,
                   json={"prompt": "Hello there"})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 0 and body["max_model_len"] > 0
    back = httpx.post(server.base_url + "/detokenize", headers=headers,
                      json={"tokens": body["tokens"]})
    assert back.status_code == 200 and back.json()["prompt"].endswith("Hello there")
    chat = httpx.post(server.base_url + "/tokenize", headers=headers, json={
        "messages": [{"role": "user", "content": "Hi"}]}).json()
    # The chat template's own tokens come with it: the same count a chat request's usage has.
    used = client.chat.completions.create(model="", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=1)
    assert chat["count"] == used.usage.prompt_tokens
    bad = httpx.post(server.base_url + "/detokenize", headers=headers, json={"tokens": [-1]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    both = httpx.post(server.base_url + "/tokenize", headers=headers,
                      json={"prompt": "x", "messages": [{"role": "user", "content": "Hi"}]})
    assert both.status_code == 400
    version = httpx.get(server.base_url + "/version")
    assert version.status_code == 200 and version.json()["version"]


def test_legacy_guided_fields_are_honoured(client):
    r = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "Is the sky blue?"}], max_tokens=5,
        extra_body={"guided_choice": ["yes", "no"]})
    assert r.choices[0].message.content in ("yes", "no")
    c = client.completions.create(model="", prompt="The year is", max_tokens=6,
                                  extra_body={"guided_regex": r"[0-9]{4}"})
    assert re.fullmatch(r"[0-9]{4}", c.choices[0].text)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    j = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "JSON please"}], max_tokens=20,
        extra_body={"guided_json": schema})
    assert isinstance(json.loads(j.choices[0].message.content)["a"], int)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="", messages=[{"role": "user", "content": "x"}], max_tokens=2,
            extra_body={"guided_regex": "a", "guided_choice": ["b"]})
    assert e.value.body["param"] == "guided_choice"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="", messages=[{"role": "user", "content": "x"}], max_tokens=2,
            extra_body={"guided_regex": "a", "structured_outputs": {"regex": "b"}})
    assert e.value.body["param"] == "guided_regex"
