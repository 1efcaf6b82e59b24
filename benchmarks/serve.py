"""Online serving benchmark: Poisson arrivals against a running `corral serve`.

At each request rate, `--num-requests` streaming completions arrive with exponential gaps
(rate `inf` sends them all at once). Prompts are random token ids of `--input-len` tokens
(uniform in +-`--range-ratio`), outputs are `--output-len` tokens with EOS ignored, so every
rate does the same work. Prints per rate: achieved request rate, output tokens/s,
time-to-first-token and inter-token latency p50/p99, end-to-end p50.

With `--structured`, each rate runs twice: first every request constrained by a
JSONSchemaBench schema (round robin over the schemas the server compiles), then the same
number of requests unconstrained, each with the output length its constrained twin had
(fresh prompts of the same lengths, so the prefix cache favours neither run).

    corral serve --port 8000 &
    python benchmarks/serve.py --rates 1 4 16 inf --num-requests 64
    # GPU, random weights in Llama-3-8B's shape:
    corral serve --load-format dummy --shape llama3-8b --device cuda &
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    itls: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def one_request(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                      model: str, prompt: list[int], output_len: int,
                      schema: dict | None = None) -> Result:
    body = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0,
            "ignore_eos": schema is None, "stream": True,
            "stream_options": {"include_usage": True}}
    if schema is not None:
        body["structured_outputs"] = {"json": schema}
    start = time.perf_counter()
    last = None
    result = Result(ok=False)
    try:
        async with client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                return Result(ok=False, error=f"{r.status_code} {r.text[:200]}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return Result(ok=False, error=str(event["error"])[:200])
                if event.get("usage"):
                    result.output_tokens = event["usage"]["completion_tokens"]
                if any(c.get("text") for c in event.get("choices", [])):
                    now = time.perf_counter()
                    if last is None:
                        result.ttft = now - start
                    else:
                        result.itls.append(now - last)
                    last = now
    except httpx.HTTPError as e:
        return Result(ok=False, error=repr(e))
    result.e2e = time.perf_counter() - start
    result.ok = True
    return result


async def run_rate(args: argparse.Namespace, rate: float, model: str,
                   prompts: list[list[int]], outputs: list[int],
                   schemas: list[dict] | None = None) -> tuple[dict[str, float], list[Result]]:
    url = args.base_url.rstrip("/") + "/completions"
    headers = {"Authorization": f"Bearer {args.api_key}"}
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        tasks = []
        cpu_start = time.process_time()
        start = time.perf_counter()
        for i, (prompt, out_len) in enumerate(zip(prompts, outputs, strict=True)):
            schema = schemas[i % len(schemas)] if schemas else None
            tasks.append(asyncio.create_task(
                one_request(client, url, headers, model, prompt, out_len, schema)))
            if math.isfinite(rate):
                await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        client_cpu = time.process_time() - cpu_start
    ok = [r for r in results if r.ok]
    for r in results:
        if not r.ok:
            print(f"  failed: {r.error}", file=sys.stderr)
    itls = [x for r in ok for x in r.itls]
    return {
        "rate": rate, "ok": len(ok), "n": len(results), "duration": duration,
        "req_s": len(ok) / duration, "tok_s": sum(r.output_tokens for r in ok) / duration,
        "ttft_p50": percentile([r.ttft for r in ok], 50) * 1000,
        "ttft_p99": percentile([r.ttft for r in ok], 99) * 1000,
        "itl_p50": percentile(itls, 50) * 1000, "itl_p99": percentile(itls, 99) * 1000,
        "e2e_p50": percentile([r.e2e for r in ok], 50),
        # The client's own CPU seconds: near `duration`, the client (not the server) sets
        # the pace of what it measures.
        "client_cpu_s": client_cpu,
    }, results


def workload(args: argparse.Namespace, seed: int | None = None
             ) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(args.seed if seed is None else seed)
    lo_tok, hi_tok = args.token_range

    def length(mean: int) -> int:
        spread = int(mean * args.range_ratio)
        return max(1, rng.randint(mean - spread, mean + spread))

    prompts = [[rng.randrange(lo_tok, hi_tok) for _ in range(length(args.input_len))]
               for _ in range(args.num_requests)]
    if args.prefix_groups:  # each prompt starts with one of a few shared prefixes
        prefixes = [[rng.randrange(lo_tok, hi_tok) for _ in range(args.prefix_len)]
                    for _ in range(args.prefix_groups)]
        prompts = [prefixes[rng.randrange(args.prefix_groups)] + p for p in prompts]
    outputs = [length(args.output_len) for _ in range(args.num_requests)]
    return prompts, outputs


async def main_async(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"}
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(args.base_url.rstrip("/") + "/models", headers=headers)
        r.raise_for_status()
        model = r.json()["data"][0]["id"]
    prompts, outputs = workload(args)
    print(f"model {model}: {args.num_requests} requests per rate, input ~{args.input_len}, "
          f"output ~{args.output_len} tokens (EOS ignored)")
    schemas = await compiled_schemas(args, model) if args.structured else None
    if args.warmup:
        await run_rate(args, math.inf, model, prompts[:2], [4, 4], schemas)
    header = (f"{'rate':>6} {'run':<12} {'ok':>7} {'req/s':>7} {'out tok/s':>10} "
              f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'e2e p50':>8}")
    print(header)
    print(" " * 49 + "(ms)      (ms)     (ms)     (ms)      (s)")
    hits_before = await prefix_cache_counts(args) if args.prefix_groups else None
    cpu_rows = []  # (rate, run, API process CPU seconds, output tokens)

    async def timed_rate(run: str, *rate_args) -> list:
        cpu0 = await server_cpu_seconds(args)
        s, results = await run_rate(args, *rate_args)
        cpu1 = await server_cpu_seconds(args)
        print_row(s, run)
        if cpu0 is not None and cpu1 is not None:
            cpu_rows.append((s["rate"], run, cpu1 - cpu0,
                             sum(r.output_tokens for r in results)))
        return results

    for n, rate in enumerate(args.rates):
        if schemas:
            results = await timed_rate("constrained", rate, model, prompts, outputs, schemas)
            lengths = [max(r.output_tokens, 1) for r in results]
            fresh, _ = workload(args, seed=args.seed + 1000 + n)
            await timed_rate("free", rate, model, fresh, lengths)
        else:
            await timed_rate("free", rate, model, prompts, outputs)
    for rate, run, cpu, tokens in cpu_rows:
        print(f"API process at rate {rate:g} ({run}): {cpu:.2f} CPU s for {tokens} output "
              f"tokens, {1e6 * cpu / max(tokens, 1):.1f} us per token")
    if hits_before is not None:
        after = await prefix_cache_counts(args)
        for replica, (hits, queries) in sorted(after.items()):
            h0, q0 = hits_before.get(replica, (0.0, 0.0))
            print(f"prefix cache, replica {replica or '-'}: {hits - h0:.0f} of {queries - q0:.0f} "
                  f"prompt tokens hit ({(hits - h0) / max(queries - q0, 1):.1%})")
    return 0


async def server_cpu_seconds(args: argparse.Namespace) -> float | None:
    """The API process's CPU seconds so far (`process_cpu_seconds_total` on /metrics; None
    where the server does not report it). Several clients' runs overlap in it."""
    base = args.base_url.rstrip("/").removesuffix("/v1")
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(base + "/metrics")
    for line in r.text.splitlines() if r.status_code == 200 else []:
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[-1])
    return None


async def prefix_cache_counts(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """(prefix-cache hit tokens, looked-up tokens) per replica, from the server's /metrics."""
    base = args.base_url.rstrip("/").removesuffix("/v1")
    async with httpx.AsyncClient(timeout=30) as client:
        text = (await client.get(base + "/metrics")).text
    counts: dict[str, list[float]] = {}
    for line in text.splitlines():
        for i, name in enumerate(("corral_prefix_cache_hits_total",
                                  "corral_prefix_cache_queries_total")):
            if line.startswith(name + "{"):
                labels = line[line.index("{") + 1:line.index("}")]
                replica = ""
                for part in labels.split(","):
                    if part.startswith("replica="):
                        replica = part.split("=", 1)[1].strip('"')
                counts.setdefault(replica, [0.0, 0.0])[i] += float(line.split()[-1])
    return {k: (v[0], v[1]) for k, v in counts.items()}


def print_row(s: dict[str, float], run: str) -> None:
    print(f"{s['rate']:>6} {run:<12} {s['ok']:>3}/{s['n']:<3} {s['req_s']:>7.2f} "
          f"{s['tok_s']:>10.1f} {s['ttft_p50']:>9.1f} {s['ttft_p99']:>9.1f} "
          f"{s['itl_p50']:>8.1f} {s['itl_p99']:>8.1f} {s['e2e_p50']:>8.2f}", flush=True)


async def compiled_schemas(args: argparse.Namespace, model: str) -> list[dict]:
    """JSONSchemaBench schemas (round robin over splits) the server accepts."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from workload_mix import jsonschemabench, round_robin_by_split

    url = args.base_url.rstrip("/") + "/completions"
    headers = {"Authorization": f"Bearer {args.api_key}"}
    chosen = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _, _, entry in round_robin_by_split(jsonschemabench(), args.seed):
            if len(chosen) >= args.num_schemas:
                break
            body = {"model": model, "prompt": [1000, 1001], "max_tokens": 1,
                    "structured_outputs": {"json": entry["schema"]}}
            r = await client.post(url, json=body, headers=headers)
            if r.status_code == 200:
                chosen.append(entry["schema"])
    print(f"{len(chosen)} schemas, round robin over JSONSchemaBench splits")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Online serving benchmark (Poisson arrivals)")
    parser.add_argument("--base-url", default=os.environ.get("CORRAL_BASE_URL",
                                                             "http://127.0.0.1:8000/v1"))
    parser.add_argument("--api-key", default=os.environ.get("CORRAL_API_KEY", "none"))
    parser.add_argument("--rates", nargs="+", type=float, default=[1.0, 4.0, math.inf],
                        help="requests per second; inf sends all at once")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--range-ratio", type=float, default=0.5)
    parser.add_argument("--token-range", nargs=2, type=int, default=[1000, 20000],
                        help="prompt token ids are drawn from this range")
    parser.add_argument("--prefix-groups", type=int, default=0,
                        help="prompts start with one of this many shared prefixes (reports "
                             "prefix-cache hits per replica)")
    parser.add_argument("--prefix-len", type=int, default=512,
                        help="tokens of each shared prefix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--structured", action="store_true",
                        help="constrained requests, then free ones of the same lengths")
    parser.add_argument("--num-schemas", type=int, default=64)
    args = parser.parse_args(argv)
    if not 0 <= args.range_ratio < 1:
        parser.error("--range-ratio: must be in [0, 1)")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
