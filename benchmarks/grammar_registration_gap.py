"""Stream gaps while a slow grammar registers: does a registration stall other streams?

Against a running `corral serve`: one streaming completion (EOS ignored, long output)
runs; after `--settle` seconds of it, a Lark grammar that takes the default backend
seconds to compile (a `--alternatives`-way choice of random literals, each followed by
one of 500 rules that recurse back: a catalogue-sized alternation) is registered through
`POST /v1/grammars`; the stream goes on for `--after` seconds past the registration's
answer. Prints the registration's time, then the gaps between streamed events before,
during and after it (p50, p99, max). Target: max gap during registration < 100 ms.

    corral serve --port 8000 &
    python benchmarks/grammar_registration_gap.py --base-url http://127.0.0.1:8000/v1

Each run's grammar has fresh random literals (`--seed`), so no compile cache answers it;
it is unregistered at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from serve import percentile  # noqa: E402


def slow_lark_grammar(alternatives: int, seed: int) -> str:
    """`start: a+` over `alternatives` literals, each followed by one of 500 rules that lead
    back to `a`: about 17 bytes per alternative, under the 1 MB definition limit."""
    rng = random.Random(seed)

    def word(n: int) -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))

    alts = " | ".join(f'"{word(7)}" b{i % 500}' for i in range(alternatives))
    tails = "\n".join(f'b{i}: "{word(3)}" a | "{word(2)}"' for i in range(500))
    return f"start: a+\na: {alts}\n{tails}\n"


@dataclass
class Timeline:
    """Arrival times of streamed events and the registration's start and end."""

    events: list[float] = field(default_factory=list)
    reg_start: float = float("nan")
    reg_end: float = float("nan")
    reg_status: str = ""
    finished: bool = False  # the stream ended (max_tokens) before the run was over


async def stream(client: httpx.AsyncClient, args: argparse.Namespace, model: str,
                 timeline: Timeline, first_event: asyncio.Event) -> None:
    body = {"model": model, "prompt": "Tell me a very long story about a lighthouse keeper.",
            "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    async with client.stream("POST", args.base_url.rstrip("/") + "/completions",
                             json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if any(c.get("text") for c in event.get("choices", [])):
                timeline.events.append(time.perf_counter())
                first_event.set()
    timeline.finished = True


async def register(client: httpx.AsyncClient, args: argparse.Namespace, name: str,
                   grammar: str, timeline: Timeline) -> None:
    url = args.base_url.rstrip("/") + "/grammars"
    timeline.reg_start = time.perf_counter()
    r = await client.post(url, json={"name": name, "syntax": "lark", "definition": grammar})
    timeline.reg_end = time.perf_counter()
    timeline.reg_status = f"HTTP {r.status_code}" + ("" if r.status_code < 300
                                                     else f" {r.text[:200]}")


def window_stats(gaps: list[float]) -> str:
    if not gaps:
        return "no events"
    return (f"{len(gaps):>5} gaps  p50 {percentile(gaps, 50) * 1e3:7.1f} ms  "
            f"p99 {percentile(gaps, 99) * 1e3:7.1f} ms  max {max(gaps) * 1e3:7.1f} ms")


def split_gaps(t: Timeline) -> dict[str, list[float]]:
    """Gaps between consecutive events: those that end before the registration starts,
    those that overlap it, those that start after its answer."""
    windows: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for prev, now in zip(t.events, t.events[1:], strict=False):
        if now < t.reg_start:
            windows["before"].append(now - prev)
        elif prev > t.reg_end:
            windows["after"].append(now - prev)
        else:
            windows["during"].append(now - prev)
    return windows


async def main_async(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"}
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    grammar = slow_lark_grammar(args.alternatives, seed)
    name = f"slow-registration-{seed}"
    async with httpx.AsyncClient(timeout=None, headers=headers) as client:
        r = await client.get(args.base_url.rstrip("/") + "/models")
        r.raise_for_status()
        model = r.json()["data"][0]["id"]
        print(f"model {model}; grammar {len(grammar.encode()) / 1e6:.2f} MB Lark, "
              f"{args.alternatives} alternatives (seed {seed})")
        timeline = Timeline()
        first = asyncio.Event()
        streamer = asyncio.create_task(stream(client, args, model, timeline, first))
        await asyncio.wait_for(first.wait(), timeout=300)
        await asyncio.sleep(args.settle)
        await register(client, args, name, grammar, timeline)
        await asyncio.sleep(args.after)
        streamer.cancel()
        try:
            await streamer
        except asyncio.CancelledError:
            pass
        await client.delete(args.base_url.rstrip("/") + f"/grammars/{name}")
    print(f"registration: {timeline.reg_end - timeline.reg_start:.2f} s, {timeline.reg_status}")
    if timeline.finished:
        print(f"warning: the stream ended before the run did; raise --max-tokens "
              f"({args.max_tokens})")
    windows = split_gaps(timeline)
    for label, gaps in windows.items():
        print(f"{label:<7} {window_stats(gaps)}")
    during = windows["during"]
    if during:
        verdict = "met" if max(during) < 0.1 else "missed"
        print(f"max gap during registration {max(during) * 1e3:.1f} ms: target < 100 ms "
              f"{verdict}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", default=os.environ.get("CORRAL_BASE_URL",
                                                         "http://127.0.0.1:8000/v1"))
    ap.add_argument("--api-key", default=os.environ.get("CORRAL_API_KEY", "none"))
    ap.add_argument("--alternatives", type=int, default=40000,
                    help="literal alternatives in the grammar (compile time grows with it)")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds of streaming before the registration")
    ap.add_argument("--after", type=float, default=2.0,
                    help="seconds of streaming after the registration's answer")
    ap.add_argument("--seed", type=int, default=None, help="the grammar's literals")
    args = ap.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
