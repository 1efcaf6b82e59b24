"""The engine core in its own process: same outputs as the in-process engine, deltas
reassembled, aborts, refusals, grammar calls off the step loop, and death handling."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from corral.engine import (
    AsyncLLMEngine,
    EngineCoreClient,
    EngineDeadError,
    SamplingParams,
    StructuredOutputsParams,
)
from corral.grammars.param_error import ParamError

CONFIG = dict(max_model_len=1024, kv_cache_memory=64 * 1024**2, dtype="float32")
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def local():
    engine = AsyncLLMEngine(**CONFIG)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def client():
    engine = EngineCoreClient(**CONFIG)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def spare():
    """A second core, for the tests that end in its death. Its grammars default to outlines,
    whose regex compiles take a second or more; its torch runs one thread, so that on a
    machine of two cores a compile and a step each get one (OpenMP threads that share a
    core with a busy thread slow a step tenfold, stalled or not)."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the spawned process only
    try:
        engine = EngineCoreClient(**{**CONFIG, "grammar_backend": "outlines"})
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    yield engine
    engine.shutdown()


def chat(engine, text: str) -> str:
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                tokenize=False, add_generation_prompt=True)


async def collect(engine, prompt, params, request_id=None) -> list:
    return [out async for out in engine.generate(prompt, params, request_id)]


def summary(out) -> list:
    """What must match exactly: logprob values only to float rounding (the two engines'
    batches differ in composition)."""
    return [(c.text, c.token_ids, c.finish_reason, c.stop_reason,
             None if c.logprobs is None else
             [(lp.token_id, [t for t, _ in lp.top_logprobs]) for lp in c.logprobs])
            for c in out.outputs]


def logprob_values(out) -> list[float]:
    return [lp.logprob for c in out.outputs for lp in c.logprobs or []]


def assert_grows(outputs: list) -> None:
    """Each streamed output extends the one before; earlier snapshots stay as they were."""
    for a, b in zip(outputs, outputs[1:], strict=False):
        for ca, cb in zip(a.outputs, b.outputs, strict=True):
            assert cb.text.startswith(ca.text) and cb.token_ids[: len(ca.token_ids)] == \
                ca.token_ids


def test_greedy_outputs_equal_the_in_process_engine(local, client):
    requests = [
        (chat(local, "Count from one to ten."), SamplingParams(temperature=0, max_tokens=14)),
        ([1, 504, 3575, 282, 4649, 314], SamplingParams(temperature=0, max_tokens=8,
                                                        logprobs=2)),
        (chat(local, "Name three fruits."), SamplingParams(temperature=0, max_tokens=30,
                                                           stop=["\n"], n=2)),
    ]

    async def both():
        ours = await asyncio.gather(*(collect(client, p, s) for p, s in requests))
        theirs = await asyncio.gather(*(collect(local, p, s) for p, s in requests))
        return ours, theirs

    ours, theirs = asyncio.run(both())
    for mine, ref in zip(ours, theirs, strict=True):
        assert_grows(mine)
        assert mine[-1].finished and mine[-1].prompt_token_ids == ref[-1].prompt_token_ids
        assert mine[-1].prompt == ref[-1].prompt
        assert summary(mine[-1]) == summary(ref[-1])
        assert logprob_values(mine[-1]) == pytest.approx(logprob_values(ref[-1]), abs=1e-3)
        assert mine[-1].metrics.finished_time >= mine[-1].metrics.first_token_time > 0


def test_stop_strings_found_in_the_client_give_the_core_outputs(local, client):
    """One-completion requests with stop strings: the client finds them in the text it
    makes (the core was sent none) and aborts the request in the core; the outputs equal
    the in-process engine's, `min_tokens`, logprobs and stop token ids included."""
    story = chat(local, "Write two short sentences about the sea.")
    fruits = chat(local, "Name three fruits, one per line.")
    requests = [
        (story, SamplingParams(temperature=0, max_tokens=60, stop=["."])),
        (story, SamplingParams(temperature=0, max_tokens=60, stop=["sea", "."], logprobs=1)),
        (story, SamplingParams(temperature=0, max_tokens=60, stop=["."], min_tokens=12)),
        (fruits, SamplingParams(temperature=0, max_tokens=40, stop=["\n"])),
        (fruits, SamplingParams(temperature=0, max_tokens=3, stop=["zzz"])),  # never met
        (story, SamplingParams(temperature=0.9, seed=3, max_tokens=60, stop=[" the", ","])),
    ]
    first = asyncio.run(collect(local, story, SamplingParams(temperature=0, max_tokens=60)))
    first_ids = first[-1].outputs[0].token_ids
    requests.append((story, SamplingParams(temperature=0, max_tokens=60, stop=["."],
                                           stop_token_ids=[first_ids[3]])))

    async def both():
        ours = await asyncio.gather(*(collect(client, p, s) for p, s in requests))
        theirs = await asyncio.gather(*(collect(local, p, s) for p, s in requests))
        return ours, theirs

    ours, theirs = asyncio.run(both())
    reasons = set()
    for mine, ref in zip(ours, theirs, strict=True):
        assert_grows(mine)
        assert mine[-1].finished and summary(mine[-1]) == summary(ref[-1])
        reasons.add(mine[-1].outputs[0].stop_reason)
    assert {".", "\n", None} <= reasons and any(isinstance(r, int) for r in reasons)
    deadline = time.monotonic() + 10
    while (stats := client.stats()).num_running or stats.kv_cache_usage:
        assert time.monotonic() < deadline, stats  # the core was told to stop them
        time.sleep(0.05)


def test_detokenize_false_returns_token_ids_only(local, client):
    """Text is made in this process by default (the core sends token ids); a request that
    asks for no text gets none, from either engine, and the same tokens."""
    prompt = [1, 504, 3575, 282, 4649, 314]
    quiet = SamplingParams(temperature=0, max_tokens=8, detokenize=False)
    mine = asyncio.run(collect(client, prompt, quiet))[-1].outputs[0]
    local_quiet = asyncio.run(collect(local, prompt, quiet))[-1].outputs[0]
    ref = asyncio.run(collect(local, prompt, SamplingParams(temperature=0, max_tokens=8))
                      )[-1].outputs[0]
    assert mine.text == local_quiet.text == "" and ref.text
    assert mine.token_ids == local_quiet.token_ids == ref.token_ids


def test_json_schema_request_streams_deltas_into_the_same_output(local, client):
    spec = StructuredOutputsParams(json=SCHEMA)
    params = SamplingParams(temperature=0, max_tokens=40, structured_outputs=spec)
    prompt = chat(local, "Describe a person as JSON.")
    mine = asyncio.run(collect(client, prompt, params))
    ref = asyncio.run(collect(local, prompt, params))
    assert len(mine) >= 3
    assert_grows(mine)
    pieces = [mine[0].outputs[0].text] + [
        b.outputs[0].text[len(a.outputs[0].text):] for a, b in zip(mine, mine[1:],
                                                                   strict=False)]
    assert "".join(pieces) == mine[-1].outputs[0].text
    assert summary(mine[-1]) == summary(ref[-1])
    assert set(json.loads(mine[-1].outputs[0].text)) == {"name", "age"}


def test_closing_the_stream_aborts_in_the_core(client):
    async def main():
        stream = client.generate("Tell me a long story.",
                                 SamplingParams(max_tokens=500, ignore_eos=True))
        async for out in stream:
            if len(out.outputs[0].token_ids) >= 3:
                break
        await stream.aclose()

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while (s := client.stats()).num_running or s.kv_cache_usage:
        assert time.monotonic() < deadline, s
        time.sleep(0.05)


def test_refusals_come_back_as_value_errors_naming_the_field(local, client):
    for engine in (local, client):
        with pytest.raises(ParamError) as e:
            engine.register_grammar("broken", 'start: "a" (', syntax="lark")
        assert e.value.param == "definition"
        with pytest.raises(ParamError) as e:
            engine.validate_structured(StructuredOutputsParams(
                json={"type": "integer", "minimum": 1}, backend="outlines"))
        assert e.value.param.startswith("structured_outputs") and "minimum" in str(e.value)
        with pytest.raises(ParamError) as e:
            asyncio.run(collect(engine, [5] * 2000, SamplingParams(max_tokens=2)))
        assert e.value.param == "prompt" and "max_model_len" in str(e.value)
    with pytest.raises(ParamError, match="logits_processors"):
        asyncio.run(collect(client, "Hi", SamplingParams(logits_processors=[lambda *a: a[-1]])))
    assert asyncio.run(collect(client, "Hi", SamplingParams(max_tokens=2)))[-1].finished


def test_registering_a_grammar_does_not_stall_a_stream(spare):
    """A registration compiles for a second or more on a core thread; the stream running
    meanwhile goes on getting tokens."""
    times: list[float] = []
    registered: list[float] = []
    started = threading.Event()

    def register() -> None:
        started.wait(30)
        begin = time.monotonic()
        spare.register_grammar("email-ish", r"[a-z]{1,500}@[a-z]{1,500}\.(com|org)",
                                syntax="regex")
        registered.extend([begin, time.monotonic()])

    async def main():
        worker = threading.Thread(target=register)
        worker.start()
        params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
        async for out in spare.generate("Once upon a time", params):
            times.append(time.monotonic())
            if len(out.outputs[0].token_ids) >= 2:
                started.set()
            if registered and time.monotonic() > registered[1] + 0.3:
                break
        await asyncio.to_thread(worker.join)

    asyncio.run(main())
    begin, end = registered
    during = [t for t in times if begin <= t <= end]
    assert end - begin > 0.5, "the registration was too quick to show anything"
    assert len(during) >= 3, (end - begin, len(during))
    assert "email-ish" in [g["name"] for g in spare.grammars()]
    spare.unregister_grammar("email-ish")


def test_server_through_the_client(spare):
    from fastapi.testclient import TestClient

    from corral.api.app import create_app

    with TestClient(create_app(spare), raise_server_exceptions=False) as http:
        body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 6,
                "temperature": 0}
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            chunks = [json.loads(line[6:]) for line in s.iter_lines()
                      if line.startswith("data: {")]
        streamed = "".join(c["choices"][0]["delta"].get("content") or ""
                           for c in chunks if c["choices"])
        assert streamed == r.json()["choices"][0]["message"]["content"]
        r = http.post("/v1/grammars", json={"name": "yn", "definition": 'start: "yes"'})
        assert r.status_code == 201, r.text
        assert "yn" in [g["name"] for g in http.get("/v1/grammars").json()["data"]]
        metrics = http.get("/metrics").text
        assert re.search(r"^corral_generation_tokens_total\{.*\} [1-9]", metrics, re.M)
        assert http.get("/health").status_code == 200


def test_killing_the_core_fails_live_requests_and_health(spare):
    from fastapi.testclient import TestClient

    from corral.api.app import create_app

    app = create_app(spare)
    with TestClient(app, raise_server_exceptions=False) as http:
        assert http.get("/health").status_code == 200

        async def main():
            params = SamplingParams(max_tokens=500, ignore_eos=True)
            seen = 0
            with pytest.raises(EngineDeadError, match="engine core died.*SIGKILL"):
                async for _ in spare.generate("Once upon a time", params):
                    seen += 1
                    if seen == 2:
                        os.kill(spare.core_pid, signal.SIGKILL)
            with pytest.raises(EngineDeadError):
                await collect(spare, "Hello", SamplingParams(max_tokens=2))

        asyncio.run(main())
        assert not spare.is_healthy()
        assert http.get("/health").status_code == 503
        r = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 503 and "engine core died" in r.json()["error"]["message"]
        with pytest.raises(EngineDeadError):
            spare.grammars()
    spare.shutdown()


def test_shutdown_leaves_no_core(client):
    pid = client.core_pid
    assert _is_running(pid)
    client.shutdown()
    assert not _is_running(pid) and not client.is_healthy()
    with pytest.raises(EngineDeadError):
        asyncio.run(collect(client, "Hello", SamplingParams(max_tokens=2)))


def test_core_leaves_when_its_parent_dies():
    """The parent is killed without a shutdown: the core's watchdog ends it."""
    script = ("import os, time, multiprocessing as mp\n"
              "from corral.engine.core_process import _watch_parent\n"
              "def child(ppid):\n"
              "    _watch_parent(ppid)\n"
              "    time.sleep(60)\n"
              "if __name__ == '__main__':\n"
              "    p = mp.get_context('spawn').Process(target=child, args=(os.getpid(),))\n"
              "    p.start()\n"
              "    print(p.pid, flush=True)\n"
              "    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert _is_running(child_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _is_running(child_pid):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.1)


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
