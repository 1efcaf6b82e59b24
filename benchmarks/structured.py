"""Structured outputs: their cost and their correctness, measured in one run.

1. Compile time per backend (median, max) over the JSONSchemaBench sample; coverage.
2. Mask time per sequence per step (median, p99) per backend, one row at a time and in
   batches (`fill_bitmasks`), walking the sample's valid instances token by token.
3. The same chat workload unconstrained and with every request constrained by a JSON
   schema (several schemas, round robin): output tokens/s of both and the ratio, the
   engine's own mask time, and the decode steps fast-forward saves.
4. Generation per split and backend: coverage (compiled / total) and validity (outputs that
   validate with jsonschema Draft 2020-12 + format checking / outputs that ended).

    python benchmarks/structured.py                         # CPU, embedded model, small
    python benchmarks/structured.py --device cuda --num-requests 256 --per-split 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jsonschema  # noqa: E402
import torch  # noqa: E402

from corral.engine import LLM, SamplingParams  # noqa: E402
from corral.engine.logits_process import allocate_bitmask  # noqa: E402
from corral.engine.sampling_params import StructuredOutputsParams  # noqa: E402
from corral.grammars import GrammarCompiler, fill_bitmasks  # noqa: E402

BACKENDS = ("llguidance", "outlines")


def datasets_dir() -> Path:
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
    return Path(os.environ.get("CORRAL_DATASETS", default))


def load_bench() -> list[tuple[str, str, dict]]:
    root = datasets_dir() / "jsonschemabench"
    if not (root / "manifest.json").is_file():
        raise SystemExit(f"JSONSchemaBench sample not found at {root} (set CORRAL_DATASETS)")
    entries = json.loads((root / "manifest.json").read_text())["entries"]
    return [(e["split"], e["file"], json.loads((root / e["file"]).read_text())) for e in entries]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def compile_all(llm: LLM, bench, backend: str, limit: int | None, timeout: float, workers: int):
    """{file: CompiledGrammar | error text} and compile times, on a fresh compiler."""
    engine = llm.engine
    compiler = GrammarCompiler(engine.tokenizer, engine.vocab_size, engine.eos_token_ids,
                               default_backend=backend, timeout=timeout, max_workers=workers)
    items = bench if limit is None else _per_split(bench, limit)
    futures = {name: compiler.submit(StructuredOutputsParams(json=item["schema"]))
               for _, name, item in items}
    results = {}
    for name, future in futures.items():
        try:
            results[name] = future.result()
        except ValueError as e:
            results[name] = str(e)
    times = [r.compile_time_s for r in results.values() if not isinstance(r, str)]
    compiler.shutdown()
    return results, times


def _per_split(bench, n: int):
    counts: dict[str, int] = defaultdict(int)
    chosen = []
    for split, name, item in bench:
        if counts[split] < n:
            counts[split] += 1
            chosen.append((split, name, item))
    return chosen


def mask_times(llm: LLM, bench, compiled: dict, batch: int) -> tuple[list[float], list[float]]:
    """Per-sequence fill time per step: one row at a time, and `batch` rows together."""
    tokenizer = llm.engine.tokenizer
    walks = []  # (compiled grammar, token ids of a valid instance)
    for _, name, item in bench:
        grammar = compiled.get(name)
        if grammar is None or isinstance(grammar, str):
            continue
        for test in item["tests"]:
            if test["valid"]:
                text = json.dumps(test["data"], separators=(",", ":"), ensure_ascii=False)
                walks.append((grammar, tokenizer.encode(text, add_special_tokens=False)))
    single, batched = [], []
    bitmask = allocate_bitmask(batch, llm.engine.vocab_size)
    for grammar, ids in walks:
        matcher = grammar.matcher()
        for token_id in ids:
            start = time.perf_counter()
            matcher.fill_bitmask(bitmask, 0)
            single.append(time.perf_counter() - start)
            if not matcher.accept_token(token_id):
                break
    for i in range(0, len(walks) - batch + 1, batch):
        group = [(g.matcher(), ids) for g, ids in walks[i:i + batch]]
        for step in range(max(len(ids) for _, ids in group)):
            active = [(m, ids) for m, ids in group if step < len(ids) and not m.is_error()]
            if not active:
                break
            matchers = [m for m, _ in active]
            start = time.perf_counter()
            fill_bitmasks(matchers, bitmask)
            batched.append((time.perf_counter() - start) / len(matchers))
            for m, ids in active:
                m.accept_token(ids[step])
    return single, batched


MAX_PROMPT_SCHEMA_CHARS = 6000  # longer schemas are left out of the prompt (context size)


def json_prompt(llm: LLM, schema: dict) -> str:
    text = json.dumps(schema, separators=(",", ":"))
    ask = (f"Reply with one JSON value that is valid against this JSON Schema:\n{text}"
           if len(text) <= MAX_PROMPT_SCHEMA_CHARS else "Reply with one JSON value.")
    return llm.render_chat([{"role": "user", "content": ask}])


def throughput(llm: LLM, schemas: list[dict], args) -> dict:
    prompts = [json_prompt(llm, schemas[i % len(schemas)]) for i in range(args.num_requests)]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run(params):
        llm.engine.grammar_step.stats.mask_fill_seconds.clear()
        forced = llm.engine.stats.forced_tokens_total
        sync()
        start = time.perf_counter()
        outputs = llm.generate(prompts, params)
        sync()
        elapsed = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        return {"tokens": tokens, "seconds": elapsed, "tok_s": tokens / elapsed,
                "forced": llm.engine.stats.forced_tokens_total - forced,
                "masks": list(llm.engine.grammar_step.stats.mask_fill_seconds)}

    llm.generate(prompts[:2], SamplingParams(max_tokens=4))  # warm-up
    plain = run([SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)]
                * len(prompts))
    constrained = [SamplingParams(temperature=0, max_tokens=args.max_tokens, fast_forward=False,
                                  structured_outputs=StructuredOutputsParams(
                                      json=schemas[i % len(schemas)]))
                   for i in range(len(prompts))]
    structured = run(constrained)
    fast = run([p.clone(fast_forward=True) for p in constrained])
    return {"plain": plain, "structured": structured, "fast_forward": fast}


def generation_table(llm: LLM, bench, compiled: dict[str, dict], args) -> list[tuple]:
    """Rows (split, backend, total, compiled, ended, valid, cut) from greedy generation."""
    rows = []
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    for backend, results in compiled.items():
        by_split: dict[str, list] = defaultdict(list)
        for split, name, item in bench:
            by_split[split].append((name, item["schema"], results.get(name)))
        for split, items in sorted(by_split.items()):
            ok = [(n, s) for n, s, r in items if r is not None and not isinstance(r, str)]
            if args.per_split:
                ok = ok[: args.per_split]
            params = [SamplingParams(temperature=0, max_tokens=args.gen_max_tokens,
                                     structured_outputs=StructuredOutputsParams(
                                         json=s, backend=backend)) for _, s in ok]
            outputs = llm.generate([json_prompt(llm, s) for _, s in ok], params) if ok else []
            ended = valid = 0
            for (_, schema), out in zip(ok, outputs, strict=True):
                completion = out.outputs[0]
                if completion.finish_reason != "stop":
                    continue
                ended += 1
                validator = jsonschema.Draft202012Validator(schema, format_checker=checker)
                try:
                    valid += validator.is_valid(json.loads(completion.text))
                except json.JSONDecodeError:
                    pass
            num_compiled = sum(1 for _, _, r in items if r is not None and not isinstance(r, str))
            seen = sum(1 for _, _, r in items if r is not None)
            rows.append((split, backend, seen, num_compiled, len(ok), ended, valid))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default=None, help="named shape for dummy weights, e.g. llama3-8b")
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--num-requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--gen-max-tokens", type=int, default=192)
    ap.add_argument("--per-split", type=int, default=2,
                    help="schemas generated per split and backend (0 = all compiled, "
                         "-1 = skip the generation table)")
    ap.add_argument("--outlines-per-split", type=int, default=4,
                    help="schemas compiled per split by outlines (0 = all; slow on CPU)")
    ap.add_argument("--compile-timeout", type=float, default=10.0)
    ap.add_argument("--compile-workers", type=int, default=2)
    ap.add_argument("--mask-batch", type=int, default=16)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    args = ap.parse_args()

    # No prefix caching: every run must compute its own prompts to compare fairly.
    llm = LLM(args.model, device=args.device, shape=args.shape, load_format=args.load_format,
              max_num_seqs=args.max_num_seqs, max_model_len=4096, enable_prefix_caching=False)
    bench = load_bench()
    device = (torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"CPU ({torch.get_num_threads()} threads)")
    model = args.shape + " (dummy weights)" if args.shape else llm.engine.model_name
    print(f"model {model}; {device}; vocab {llm.engine.vocab_size}")

    compiled: dict[str, dict] = {}
    print(f"\n{'backend':<11} {'schemas':>7} {'compiled':>8} {'refused':>7} {'timeout':>7} "
          f"{'compile median':>15} {'max':>9} {'mask median':>12} {'p99':>9} "
          f"{'batched median':>15} {'p99':>9}")
    for backend in args.backends.split(","):
        limit = args.outlines_per_split or None if backend == "outlines" else None
        results, times = compile_all(llm, bench, backend, limit, args.compile_timeout,
                                     args.compile_workers)
        compiled[backend] = results
        single, batched = mask_times(llm, bench, results, args.mask_batch)
        timeouts = sum(1 for r in results.values() if isinstance(r, str) and "timed out" in r)
        refused = sum(1 for r in results.values() if isinstance(r, str)) - timeouts
        print(f"{backend:<11} {len(results):>7} {len(times):>8} {refused:>7} {timeouts:>7} "
              f"{statistics.median(times) * 1e3:>12.2f} ms {max(times) * 1e3:>6.0f} ms "
              f"{pct(single, 0.5) * 1e6:>9.1f} us {pct(single, 0.99) * 1e6:>6.0f} us "
              f"{pct(batched, 0.5) * 1e6:>12.1f} us {pct(batched, 0.99) * 1e6:>6.0f} us")

    default = compiled[args.backends.split(",")[0]]
    schemas = [item["schema"] for _, name, item in _per_split(bench, 1)
               if not isinstance(default.get(name, "x"), str)]
    result = throughput(llm, schemas, args)
    plain, structured, fast = result["plain"], result["structured"], result["fast_forward"]
    print(f"\nworkload: {args.num_requests} chat requests, {len(schemas)} JSON schemas round "
          f"robin, max {args.max_tokens} tokens (unconstrained: EOS ignored)")
    for name, r in (("unconstrained", plain), ("JSON-schema constrained", structured),
                    ("constrained + fast-forward", fast)):
        masks = r["masks"]
        mask = (f"mask median {pct(masks, 0.5) * 1e6:.1f} us, p99 {pct(masks, 0.99) * 1e6:.1f} us"
                if masks else "")
        print(f"{name:<28} {r['tokens']:>7} tokens {r['seconds']:>8.2f} s "
              f"{r['tok_s']:>9.1f} tok/s  {mask}")
    print(f"constrained / unconstrained tokens/s: {structured['tok_s'] / plain['tok_s']:.2f}x")
    print(f"fast-forward: {fast['forced']} of {fast['tokens']} tokens forced (decode steps "
          f"saved); tokens/s {fast['tok_s'] / structured['tok_s']:.2f}x constrained without it")

    if args.per_split < 0:
        return
    rows = generation_table(llm, bench, compiled, args)
    print(f"\n{'split':<16} {'backend':<11} {'schemas':>7} {'compiled':>8} {'coverage':>8} "
          f"{'generated':>9} {'ended':>6} {'valid':>6} {'validity':>8}")
    totals: dict[str, list[int]] = defaultdict(lambda: [0] * 5)
    for split, backend, seen, num_compiled, generated, ended, valid in rows:
        validity = f"{valid / ended:.0%}" if ended else "-"
        print(f"{split:<16} {backend:<11} {seen:>7} {num_compiled:>8} "
              f"{num_compiled / seen if seen else 0:>8.0%} {generated:>9} {ended:>6} "
              f"{valid:>6} {validity:>8}")
        for i, v in enumerate((seen, num_compiled, generated, ended, valid)):
            totals[backend][i] += v
    for backend, (seen, num_compiled, generated, ended, valid) in totals.items():
        print(f"{'all':<16} {backend:<11} {seen:>7} {num_compiled:>8} "
              f"{num_compiled / seen:>8.0%} {generated:>9} {ended:>6} {valid:>6} "
              f"{(valid / ended if ended else 0):>8.0%}")


if __name__ == "__main__":
    main()
