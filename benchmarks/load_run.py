"""Load run: many concurrent streams over the three APIs, some clients leaving early, and a
SIGTERM in the middle of a wave.

Starts `corral serve` (the embedded model unless `--server-args` say otherwise) with a bound
on waiting requests, then runs two waves of `--streams` concurrent streams, spread over
chat completions, Responses and Anthropic Messages (a third each, a quarter of them with
tools and tool_choice "required"); `--disconnect` of the streams close their connection
after a few events.

- Wave 1 runs to the end; then /metrics must show nothing running or waiting and no KV
  blocks in use.
- Wave 2 gets a SIGTERM once `--sigterm-after` of its streams have begun: every stream the
  server admitted (HTTP 200) and the client did not leave must still end properly
  (`[DONE]`, `response.completed` or `.incomplete`, `message_stop`), and the server must exit.

Prints per wave: streams admitted, refused with 429 (with Retry-After), completed, left by
the client, broken (admitted, not left, yet not ended properly: must be 0), other errors.

    python benchmarks/load_run.py --streams 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}},
                                               "required": ["city"]}}}]
QUESTIONS = ["What is the weather in Paris?", "Tell me about rivers.", "Name three colors.",
             "Write a haiku about the sea.", "What is 2 + 2?", "Describe a cat."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_for(i: int, rng: random.Random, model: str, max_tokens: int
                ) -> tuple[str, str, dict, str]:
    """(api, path, body, end marker) of stream `i`."""
    question = rng.choice(QUESTIONS)
    with_tools = rng.random() < 0.25
    api = ("chat", "responses", "messages")[i % 3]
    if api == "chat":
        body = {"model": model, "messages": [{"role": "user", "content": question}],
                "stream": True, "max_tokens": max_tokens, "temperature": 0.7}
        if with_tools:
            body |= {"tools": TOOLS, "tool_choice": "required"}
        return api, "/v1/chat/completions", body, "data: [DONE]"
    if api == "responses":
        body = {"model": model, "input": question, "stream": True, "store": False,
                "max_output_tokens": max_tokens, "temperature": 0.7}
        if with_tools:
            body |= {"tools": [{"type": "function", **TOOLS[0]["function"]}],
                     "tool_choice": "required"}
        # A response cut by max_output_tokens ends with response.incomplete instead.
        return api, "/v1/responses", body, "event: response.completed|event: response.incomplete"
    body = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0.7,
            "messages": [{"role": "user", "content": question}]}
    if with_tools:
        body |= {"tools": [{"name": "get_weather", "description": "Weather",
                            "input_schema": TOOLS[0]["function"]["parameters"]}],
                 "tool_choice": {"type": "any"}}
    return api, "/v1/messages", body, "event: message_stop"


async def one_stream(client: httpx.AsyncClient, base: str, i: int, rng: random.Random,
                     model: str, args: argparse.Namespace, started: list[int]) -> str:
    """The stream's outcome: completed, left, refused, broken or error:<what>."""
    api, path, body, end = request_for(i, rng, model, args.max_tokens)
    leave_after = rng.randint(1, 6) if rng.random() < args.disconnect else None
    events = 0
    admitted = False
    ends = end.split("|")
    try:
        async with client.stream("POST", base + path, json=body) as r:
            if r.status_code == 429:
                await r.aread()
                return "refused" if r.headers.get("retry-after") else "error:429 w/o Retry-After"
            if r.status_code != 200:
                await r.aread()
                return f"error:{r.status_code}"
            started.append(i)
            admitted = True
            async for line in r.aiter_lines():
                if line in ends:
                    return "completed"
                if line.startswith("data: "):
                    events += 1
                    if leave_after is not None and events >= leave_after:
                        return "left"
            return "broken"
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as e:
        if not admitted:  # the server was stopping and no longer took connections
            return "turned away" if isinstance(e, httpx.ConnectError) or STOPPING \
                else f"error:{type(e).__name__}"
        return "left" if leave_after is not None else "broken"
    except httpx.HTTPError as e:
        return f"error:{type(e).__name__}"


STOPPING: list[bool] = []  # [True] once SIGTERM was sent


async def wave(base: str, model: str, args: argparse.Namespace, seed: int,
               proc: subprocess.Popen | None = None) -> Counter:
    rng = random.Random(seed)
    started: list[int] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=30), limits=limits) as client:
        tasks = [asyncio.create_task(one_stream(client, base, i, random.Random(rng.random()),
                                                model, args, started))
                 for i in range(args.streams)]
        if proc is not None:
            while len(started) < args.sigterm_after * args.streams and not all(
                    t.done() for t in tasks):
                await asyncio.sleep(0.05)
            STOPPING.append(True)
            proc.send_signal(signal.SIGTERM)
            print(f"  SIGTERM sent with {len(started)} streams begun", flush=True)
        outcomes = await asyncio.gather(*tasks)
    return Counter(outcomes)


def metrics(base: str) -> dict[str, float]:
    values = {}
    for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
        for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
            if line.startswith(f"corral_{name}{{"):
                values[name] = values.get(name, 0.0) + float(line.split()[-1])
    return values


def report(name: str, outcomes: Counter) -> None:
    admitted = sum(n for k, n in outcomes.items() if k in ("completed", "left", "broken"))
    errors = {k: n for k, n in outcomes.items() if k.startswith("error:")}
    print(f"{name}: {sum(outcomes.values())} streams: admitted {admitted}, refused (429) "
          f"{outcomes['refused']}, completed {outcomes['completed']}, left by the client "
          f"{outcomes['left']}, broken {outcomes['broken']}, turned away while stopping "
          f"{outcomes['turned away']}, other errors {errors or 0}",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--disconnect", type=float, default=0.15)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-waiting", type=int, default=256)
    ap.add_argument("--shutdown-timeout", type=float, default=120)
    ap.add_argument("--sigterm-after", type=float, default=0.3,
                    help="share of wave 2's streams begun when SIGTERM is sent")
    ap.add_argument("--server-args", default="--max-model-len 1024 --kv-cache-memory 256MiB",
                    help="more flags for corral serve")
    args = ap.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "corral.api.cli", "serve", "--port", str(port),
           "--embedding-model", "none", "--log-level", "warning", "--responses-db", ":memory:",
           "--max-waiting", str(args.max_waiting), "--shutdown-timeout",
           str(args.shutdown_timeout), *args.server_args.split()]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                print("the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.5)
        model = httpx.get(base + "/v1/models").json()["data"][0]["id"]
        print(f"{args.streams} concurrent streams per wave over chat / responses / messages, "
              f"{args.disconnect:.0%} leaving early, max_tokens {args.max_tokens}, "
              f"--max-waiting {args.max_waiting}", flush=True)
        start = time.monotonic()
        first = asyncio.run(wave(base, model, args, seed=1))
        report(f"wave 1 ({time.monotonic() - start:.1f} s)", first)
        time.sleep(1.0)
        idle = metrics(base)
        print(f"after wave 1: running {idle.get('num_requests_running')}, waiting "
              f"{idle.get('num_requests_waiting')}, KV in use "
              f"{idle.get('kv_cache_usage_perc')}", flush=True)
        start = time.monotonic()
        second = asyncio.run(wave(base, model, args, seed=2, proc=proc))
        code = proc.wait(timeout=args.shutdown_timeout + 60)
        report(f"wave 2 with SIGTERM ({time.monotonic() - start:.1f} s)", second)
        print(f"server exited with {code} "
              f"({'SIGTERM, after draining' if code == -signal.SIGTERM else 'its own code'})")
        bad = first["broken"] + second["broken"] + sum(
            n for k, n in (first + second).items() if k.startswith("error:"))
        busy = idle.get("num_requests_running", 1) + idle.get("num_requests_waiting", 1) + \
            idle.get("kv_cache_usage_perc", 1)
        return 0 if bad == 0 and busy == 0 else 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
