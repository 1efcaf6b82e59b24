"""Chat completions against a real `corral serve`, through the official openai client."""

from __future__ import annotations

import json

import jsonschema

USER = [{"role": "user", "content": "Name three colours."}]


def test_chat_basic_shape_and_usage(client):
    r = client.chat.completions.create(model="", messages=USER, max_tokens=12, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.model == "SmolLM2-135M-Instruct"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.tool_calls is None
    u = r.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_stream_joins_to_the_non_streamed_answer(client):
    kwargs = dict(model="", messages=USER, max_tokens=16, temperature=0)
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices
                and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == full.usage.completion_tokens
    assert usage_chunk.usage.total_tokens == (usage_chunk.usage.prompt_tokens
                                              + usage_chunk.usage.completion_tokens)
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_and_seed(client):
    kwargs = dict(model="", messages=USER, max_tokens=8, temperature=1.0, n=3, seed=1234)
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert 3 <= a.usage.completion_tokens <= 24
    assert len({c.message.content for c in a.choices}) > 1  # sampled, not copies
    streamed = list(client.chat.completions.create(**kwargs, stream=True))
    per_index = {i: "" for i in range(3)}
    for c in streamed:
        for ch in c.choices:
            per_index[ch.index] += ch.delta.content or ""
    assert [per_index[i] for i in range(3)] == [c.message.content for c in a.choices]


def test_stop_string_is_left_out(client):
    msgs = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    free = client.chat.completions.create(model="", messages=msgs, max_tokens=30,
                                          temperature=0).choices[0].message.content
    assert "4" in free, free
    stopped = client.chat.completions.create(model="", messages=msgs, max_tokens=30,
                                             temperature=0, stop=["4"]).choices[0]
    assert stopped.finish_reason == "stop"
    assert "4" not in stopped.message.content
    assert free.startswith(stopped.message.content)


def test_logprobs(client):
    r = client.chat.completions.create(model="", messages=USER, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content).startswith(r.choices[0].message.content[:3])
    for t in content:
        assert -9999.0 <= t.logprob <= 0.0 and len(t.top_logprobs) == 3
        assert bytes(t.bytes).decode("utf-8", errors="replace") == t.token
        # greedy: the sampled token is the most likely one
        assert abs(t.logprob - t.top_logprobs[0].logprob) < 1e-4
    stream = list(client.chat.completions.create(model="", messages=USER, max_tokens=6,
                                                 temperature=0, logprobs=True, top_logprobs=1,
                                                 stream=True))
    streamed = [t.token for c in stream for ch in c.choices if ch.logprobs
                for t in ch.logprobs.content]
    assert streamed == [t.token for t in content]


def test_json_mode_gives_json(client):
    msgs = [{"role": "user", "content": "Give a JSON object with a key \"city\" set to Paris."}]
    r = client.chat.completions.create(model="", messages=msgs, max_tokens=60, temperature=0,
                                       response_format={"type": "json_object"})
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(json.loads(choice.message.content), dict)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}


def test_json_schema_outputs_validate(client):
    msgs = [{"role": "user", "content": "Describe a user called Ann, 31 years old."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                  "strict": True}}
    r = client.chat.completions.create(model="", messages=msgs, max_tokens=80, temperature=0.7,
                                       n=2, seed=3, response_format=fmt)
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)
