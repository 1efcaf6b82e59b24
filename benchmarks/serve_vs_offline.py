"""Serving versus offline on one workload: what the server costs over the bare engine.

The same seeded requests (`--num-prompts` random-token prompts of `--input-len` tokens,
`--output-len` output tokens each, EOS ignored) run first offline through `LLM.generate`
(in a process of its own, gone before the next phase so the device is free), then online
through a `corral serve` subprocess this script starts with the same engine settings on
the same device: all at once (rate inf), then at Poisson rate `--itl-rate`, sent by
`--client-processes` client processes (one Python client is CPU-bound near 10K streamed
tokens/s; each prints the CPU seconds it used). Prints output
tokens/s both ways and their ratio (target >= 0.95), and the inter-token latency p50/p99
at `--itl-rate` with the ratio p99/p50 (target <= 2).

    python benchmarks/serve_vs_offline.py --device cuda --model <tokenizer folder> \\
        --shape llama3-8b --load-format dummy --num-prompts 256 --input-len 512 \\
        --output-len 256
    python benchmarks/serve_vs_offline.py --device cpu --shape llama-tiny --load-format dummy \\
        --num-prompts 16 --input-len 32 --output-len 32 --itl-rate 8
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import math
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from child_run import run_in_child  # noqa: E402
from serve import percentile, run_rate, workload  # noqa: E402


def engine_args(args: argparse.Namespace) -> dict[str, object]:
    """The engine settings both phases share (flag name without dashes -> value)."""
    return {"model": args.model, "shape": args.shape, "load_format": args.load_format,
            "device": args.device, "dtype": args.dtype, "seed": args.seed,
            "max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs,
            "max_num_batched_tokens": args.max_num_batched_tokens,
            "tensor_parallel_size": args.tensor_parallel_size}


def offline(args: argparse.Namespace, prompts: list[list[int]], outputs: list[int]
            ) -> tuple[float, int]:
    """(seconds, output tokens) of `LLM.generate` over the whole workload, after a warm-up."""
    import torch

    from corral.engine import LLM, SamplingParams

    settings = {k: v for k, v in engine_args(args).items() if v is not None}
    with LLM(settings.pop("model", None), **settings) as llm:
        warm = SamplingParams(max_tokens=4, ignore_eos=True)
        llm.generate(prompts[:2], [warm, warm])
        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in outputs]
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        sync()
        start = time.perf_counter()
        results = llm.generate(prompts, params)
        sync()
        elapsed = time.perf_counter() - start
    return elapsed, sum(len(r.outputs[0].token_ids) for r in results)


def start_server(args: argparse.Namespace) -> subprocess.Popen:
    command = [sys.executable, "-m", "corral.api.cli", "serve", "--port", str(args.port),
               "--embedding-model", "none", "--log-level", "warning"]
    for key, value in engine_args(args).items():
        if value is not None:
            command += ["--" + key.replace("_", "-"), str(value)]
    return subprocess.Popen(command)


async def wait_ready(base_url: str, server: subprocess.Popen, timeout: float) -> str:
    """The served model's id once the server answers; RuntimeError if it exits first."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.returncode}")
            try:
                r = await client.get(base_url + "/models")
                if r.status_code == 200:
                    return r.json()["data"][0]["id"]
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s")


def client_share(args: argparse.Namespace, rate: float, model: str, prompts: list[list[int]],
                 outputs: list[int], start_at: float) -> dict:
    """One client process's share of a run, started at wall time `start_at`: its raw
    figures (merged by `run_clients`)."""

    async def run() -> dict:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.time()
        stats, results = await run_rate(args, rate, model, prompts, outputs)
        ok = [r for r in results if r.ok]
        return {"began": began, "ended": began + stats["duration"], "n": len(results),
                "ok": len(ok), "tokens": sum(r.output_tokens for r in ok),
                "itls": [x for r in ok for x in r.itls], "ttfts": [r.ttft for r in ok],
                "cpu": stats["client_cpu_s"]}

    return asyncio.run(run())


async def run_clients(args: argparse.Namespace, rate: float, model: str,
                      prompts: list[list[int]], outputs: list[int]) -> dict[str, float]:
    """`run_rate` over `--client-processes` processes, each sending every N-th request at
    rate/N (a Poisson process split N ways is N Poisson processes), as traffic from many
    clients arrives; one Python client relaying ~10K streamed tokens/s is itself CPU-bound.
    Duration: first start to last end over all processes."""
    n = args.client_processes
    context = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with concurrent.futures.ProcessPoolExecutor(n, mp_context=context) as pool:
        # Start the workers (imports) before the clock: a first round trip each.
        await asyncio.gather(*[loop.run_in_executor(pool, time.sleep, 0.5) for _ in range(n)])
        start_at = time.time() + 1.0
        shares = await asyncio.gather(*[
            loop.run_in_executor(pool, client_share, args, rate / n, model, prompts[i::n],
                                 outputs[i::n], start_at) for i in range(n)])
    duration = max(s["ended"] for s in shares) - min(s["began"] for s in shares)
    itls = [x for s in shares for x in s["itls"]]
    return {"duration": duration, "ok": sum(s["ok"] for s in shares),
            "n": sum(s["n"] for s in shares),
            "tok_s": sum(s["tokens"] for s in shares) / duration,
            "itl_p50": percentile(itls, 50) * 1000, "itl_p99": percentile(itls, 99) * 1000,
            "ttft_p50": percentile([x for s in shares for x in s["ttfts"]], 50) * 1000,
            "client_cpu_s": max(s["cpu"] for s in shares)}


async def online(args: argparse.Namespace, server: subprocess.Popen,
                 prompts: list[list[int]], outputs: list[int], offline_rate: float) -> None:
    """Both online phases with benchmarks/serve.py's client, each printed as soon as it is
    measured (a run cut by a time limit still shows what it measured)."""
    model = await wait_ready(args.base_url, server, args.server_timeout)
    await run_rate(args, math.inf, model, prompts[:2], [4] * len(prompts[:2]))  # warm-up
    at_inf = await run_clients(args, math.inf, model, prompts, outputs)
    online_tokens = at_inf["tok_s"] * at_inf["duration"]
    print(f"online, rate inf:         {online_tokens:>7.0f} tokens {at_inf['duration']:8.2f} s "
          f"{at_inf['tok_s']:9.1f} tok/s ({at_inf['ok']}/{at_inf['n']} ok; "
          f"{args.client_processes} client process(es), the busiest used "
          f"{at_inf['client_cpu_s']:.2f} CPU s)")
    print(f"online / offline tok/s:   {at_inf['tok_s'] / offline_rate:.3f} (target >= 0.95)",
          flush=True)
    at_rate = await run_clients(args, args.itl_rate, model, prompts, outputs)
    p50, p99 = at_rate["itl_p50"], at_rate["itl_p99"]
    print(f"online, rate {args.itl_rate:g}/s: ITL p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"p99/p50 {p99 / p50:.2f} (target <= 2); TTFT p50 {at_rate['ttft_p50']:.1f} ms, "
          f"{at_rate['tok_s']:.1f} tok/s ({at_rate['ok']}/{at_rate['n']} ok)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint, or tokenizer folder with --shape")
    ap.add_argument("--shape", default=None, help="named shape for dummy weights, e.g. llama3-8b")
    ap.add_argument("--load-format", default=None, choices=["auto", "dummy"])
    ap.add_argument("--device", default=None, help="auto, cpu or cuda[:N]")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--tensor-parallel-size", type=int, default=None)
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--itl-rate", type=float, default=64.0,
                    help="requests/s of the inter-token latency run")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--max-model-len", type=int, default=None,
                    help="default: input + output length + 16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--client-processes", type=int, default=4,
                    help="client processes sharing the online requests")
    ap.add_argument("--port", type=int, default=8731)
    ap.add_argument("--server-timeout", type=float, default=600.0,
                    help="seconds to wait for the server to start")
    args = ap.parse_args(argv)
    if args.max_model_len is None:
        args.max_model_len = args.input_len + args.output_len + 16
    # What benchmarks/serve.py's workload and client read: fixed lengths, no shared prefix.
    args.num_requests, args.range_ratio, args.token_range = args.num_prompts, 0.0, [1000, 20000]
    args.prefix_groups, args.prefix_len = 0, 0
    args.base_url, args.api_key = f"http://127.0.0.1:{args.port}/v1", "none"
    prompts, outputs = workload(args)

    name = args.shape or args.model or "embedded model"
    print(f"{args.num_prompts} prompts x {args.input_len} tokens in, {args.output_len} out "
          f"(EOS ignored); {name}, {args.load_format or 'auto'} weights, device "
          f"{args.device or 'auto'}", flush=True)
    seconds, tokens = run_in_child(offline, args, prompts, outputs)
    offline_rate = tokens / seconds
    print(f"offline LLM.generate:     {tokens:>7} tokens {seconds:8.2f} s "
          f"{offline_rate:9.1f} tok/s", flush=True)
    server = start_server(args)
    try:
        asyncio.run(online(args, server, prompts, outputs, offline_rate))
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
