"""Structured outputs on a broad mix: their cost per grammar and end to end, in one run.

The mix (`workload_mix.py`): JSONSchemaBench schemas from every split, BFCL tool calls
(`tool_choice` required and auto, parallel), JSON mode, regexes and Lark grammars.

1. Per grammar kind: compile time (a fresh compiler), and, walking each constrained
   output of the end-to-end run token by token, mask fill and accept time per step
   (p50/p99) and the share of steps where the grammar forces the token.
2. End to end at each concurrency level: the mix's requests with `C` in flight at a time
   (a new one starts as one ends), every request constrained; then the same requests
   unconstrained with each one's output length taken from the constrained run (EOS
   ignored). Output tokens/s of both and the ratio, and a per-step timeline of both runs:
   host ms per phase against device ms (GPU: device busy time and idle gaps from CUDA
   events; CPU: the forward pass's wall time).

    python benchmarks/structured_mix.py                                   # CPU, embedded
    python benchmarks/structured_mix.py --device cuda --model <llama3 folder> \\
        --load-format dummy --concurrency 16,64,256 --max-tokens 256
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from workload_mix import MixItem, build_mix, compile_check  # noqa: E402

from corral.engine import LLM, SamplingParams  # noqa: E402
from corral.engine.detokenizer import final_text  # noqa: E402
from corral.engine.logits_process import allocate_bitmask  # noqa: E402
from corral.engine.step_profile import StepProfiler  # noqa: E402
from corral.grammars import GrammarCompiler  # noqa: E402
from corral.grammars.mask_cache import shared_store  # noqa: E402

PHASES = ("schedule", "draft", "forward", "wait_device", "accept", "resolve", "masks",
          "sample", "close", "look_ahead", "outputs")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_closed_loop(llm: LLM, prompts: list[list[int]], params: list[SamplingParams],
                    concurrency: int, profile: bool) -> tuple[float, list, StepProfiler | None]:
    """Run the requests with `concurrency` in flight; returns (seconds, outputs, profile)."""
    engine = llm.engine
    profiler = StepProfiler(engine.runner.device) if profile else None
    if profiler is not None:
        engine.profile = profiler
    outputs: list = [None] * len(prompts)
    next_index = 0
    live: dict[str, int] = {}
    sync = torch.cuda.synchronize if engine.runner.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    while next_index < len(prompts) or live:
        while next_index < len(prompts) and len(live) < concurrency:
            request_id = f"mix-{next_index}"
            sent = params[next_index]
            if sent.detokenize and not sent.stop:  # as LLM.generate: text decoded at the end
                sent = sent.clone(detokenize=False)
            engine.add_request(request_id, prompts[next_index], sent)
            live[request_id] = next_index
            next_index += 1
        for out in engine.step(emit_unfinished=False):
            if out.finished and out.request_id in live:
                index = live.pop(out.request_id)
                if params[index].detokenize and not params[index].stop:
                    for completion in out.outputs:
                        completion.text = final_text(
                            engine.tokenizer, out.prompt_token_ids, completion.token_ids,
                            params[index].skip_special_tokens)
                outputs[index] = out
        if engine.last_step_idle:
            time.sleep(0.0005)
    sync()
    elapsed = time.perf_counter() - start
    if profiler is not None:
        from corral.engine.step_profile import NullProfiler

        profiler.close()
        engine.profile = NullProfiler()
    return elapsed, outputs, profiler


def grammar_walks(llm: LLM, items: list[MixItem], outputs: list) -> dict[str, dict]:
    """Per kind: fill and accept seconds per step, forced-step share (walking outputs)."""
    engine = llm.engine
    bitmask = allocate_bitmask(1, engine.vocab_size)
    stats: dict[str, dict] = defaultdict(lambda: {"fill": [], "accept": [], "forced": 0,
                                                  "steps": 0})
    for item, out in zip(items, outputs, strict=True):
        if out is None or out.error:
            continue
        compiled = engine.grammar.compile(item.constraint)
        matcher = compiled.matcher()
        s = stats[item.kind]
        for token in out.outputs[0].token_ids:
            start = time.perf_counter()
            matcher.fill_bitmask(bitmask, 0)
            middle = time.perf_counter()
            ok = matcher.accept_token(token)
            end = time.perf_counter()
            s["fill"].append(middle - start)
            s["accept"].append(end - middle)
            s["steps"] += 1
            allowed = int(torch.count_nonzero(
                (bitmask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1))
            s["forced"] += allowed == 1
            if not ok or matcher.is_terminated():
                break
    return stats


def compile_times(llm: LLM, items: list[MixItem]) -> dict[str, list[float]]:
    """Compile seconds per kind on a fresh compiler (no cache), one compile at a time."""
    engine = llm.engine
    compiler = GrammarCompiler(engine.tokenizer, engine.vocab_size, engine.eos_token_ids,
                               default_backend=engine.config.grammar_backend, timeout=60.0,
                               max_workers=1)
    times: dict[str, list[float]] = defaultdict(list)
    for item in items:
        try:
            times[item.kind].append(compiler.compile(item.constraint).compile_time_s)
        except ValueError:
            pass
    compiler.shutdown()
    return times


def print_grammar_table(times: dict[str, list[float]], walks: dict[str, dict]) -> None:
    print(f"\n{'kind':<15} {'grammars':>8} {'compile p50':>12} {'max':>8} {'fill p50':>9} "
          f"{'p99':>8} {'accept p50':>11} {'p99':>8} {'forced':>7} {'steps':>7}")
    all_fill, all_accept, all_forced, all_steps = [], [], 0, 0
    for kind in sorted(set(times) | set(walks)):
        t, w = times.get(kind, []), walks.get(kind, {"fill": [], "accept": [], "forced": 0,
                                                     "steps": 0})
        all_fill += w["fill"]
        all_accept += w["accept"]
        all_forced += w["forced"]
        all_steps += w["steps"]
        print(f"{kind:<15} {len(t):>8} {pct(t, .5) * 1e3:>9.1f} ms {max(t or [0]) * 1e3:>5.0f} ms"
              f" {pct(w['fill'], .5) * 1e6:>6.1f} us {pct(w['fill'], .99) * 1e6:>5.0f} us"
              f" {pct(w['accept'], .5) * 1e6:>8.1f} us {pct(w['accept'], .99) * 1e6:>5.0f} us"
              f" {w['forced'] / max(w['steps'], 1):>7.0%} {w['steps']:>7}")
    print(f"{'all':<15} {sum(len(t) for t in times.values()):>8} {'':>12} {'':>8} "
          f"{pct(all_fill, .5) * 1e6:>6.1f} us {pct(all_fill, .99) * 1e6:>5.0f} us "
          f"{pct(all_accept, .5) * 1e6:>8.1f} us {pct(all_accept, .99) * 1e6:>5.0f} us "
          f"{all_forced / max(all_steps, 1):>7.0%} {all_steps:>7}")


def print_timeline(level: int, free: dict[str, float], constrained: dict[str, float]) -> None:
    keys = ["steps", "steps_with_prefill", "batch"] + [f"host_{p}" for p in PHASES] + [
        "host_total", "host_total_p99", "device_forward", "device_sample", "gap_before_sample",
        "gap_before_forward", "device_step"] + [f"host_{p}_s" for p in PHASES] + [
        "host_total_s", "device_busy_s", "device_idle_s", "between_steps_s", "gc_s",
        "gc_full_collections"]
    print(f"  timeline at {level} in flight (median per step):   {'free':>9} {'constrained':>12}")
    for key in keys:
        if key in free or key in constrained:
            counts = ("steps", "steps_with_prefill", "batch", "gc_full_collections")
            unit = "" if key in counts else (" s" if key.endswith("_s") else " ms")
            print(f"    {key:<34} {free.get(key, float('nan')):>9.2f} "
                  f"{constrained.get(key, float('nan')):>12.2f}{unit}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--shape", default=None)
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--grammar-backend", default="llguidance")
    ap.add_argument("--num-schemas", type=int, default=72)
    ap.add_argument("--num-tools", type=int, default=24)
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--requests-per-level", type=int, default=0,
                    help="requests per concurrency level (0: 4x the level, at least two "
                         "per grammar of the mix, so that the last requests' tail is short)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--no-timeline", action="store_true")
    ap.add_argument("--no-close", action="store_true",
                    help="let max_tokens cut constrained outputs (close_structures off)")
    ap.add_argument("--fast-forward", action="store_true",
                    help="verify the tokens grammars force ahead, several per forward pass")
    ap.add_argument("--completion-workers", type=int, default=None,
                    help="worker processes for completion searches (default: the engine's)")
    ap.add_argument("--dump-steps", default=None, metavar="FILE",
                    help="write every profiled step (host ms per phase, batch, device ms) "
                         "as JSON lines, tagged with the level and the run")
    ap.add_argument("--max-mixed-graph-tokens", type=int, default=1024,
                    help="steps mixing prefill and decodes up to this many tokens replay "
                         "CUDA graphs cut at attention (0: eager)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    levels = [int(x) for x in args.concurrency.split(",")]
    llm = LLM(args.model, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype,
              shape=args.shape, load_format=args.load_format, max_num_seqs=max(levels),
              max_model_len=args.max_model_len, enable_prefix_caching=False,
              grammar_backend=args.grammar_backend,
              fast_forward=args.fast_forward, completion_workers=args.completion_workers,
              max_mixed_graph_tokens=args.max_mixed_graph_tokens)
    engine = llm.engine

    compiles = compile_check(engine)

    start = time.perf_counter()
    items = build_mix(compiles, args.num_schemas, args.num_tools, args.seed)
    kinds = defaultdict(int)
    for item in items:
        kinds[item.kind] += 1
    device = (torch.cuda.get_device_name() if engine.runner.device.type == "cuda"
              else f"CPU ({torch.get_num_threads()} threads)")
    print(f"model {args.shape or engine.model_name} ({args.load_format} weights, "
          f"{engine.runner.dtype}); {device}; vocab {engine.vocab_size}; backend "
          f"{args.grammar_backend}; async scheduling {engine.async_scheduling}")
    print(f"mix: {len(items)} grammars ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})"
          f", built in {time.perf_counter() - start:.0f} s")
    prompt_ids = [engine.tokenize(item.prompt(engine.tokenizer)) for item in items]
    print(f"prompt tokens: min {min(map(len, prompt_ids))}, median "
          f"{statistics.median(map(len, prompt_ids)):.0f}, max {max(map(len, prompt_ids))}")

    warm = [SamplingParams(temperature=0, max_tokens=4, structured_outputs=i.constraint)
            for i in items[:8]]
    llm.generate([prompt_ids[i] for i in range(len(warm))], warm)

    rows, timelines, first_outputs = [], [], None
    shuffled = list(range(len(items)))
    random.Random(args.seed).shuffle(shuffled)  # every level draws across all kinds
    for level in levels:
        count = args.requests_per_level or max(4 * level, 2 * len(items))
        order = [shuffled[i % len(items)] for i in range(count)]
        prompts = [prompt_ids[i] for i in order]
        constrained = [SamplingParams(temperature=0, max_tokens=args.max_tokens,
                                      structured_outputs=items[i].constraint,
                                      close_structures=not args.no_close) for i in order]
        gc.collect()
        store = shared_store()
        hits0, misses0 = store.hits, store.misses
        tc, outs, prof_c = run_closed_loop(llm, prompts, constrained, level,
                                           not args.no_timeline)
        cache_hits = store.hits - hits0
        closer = engine.closer
        print(f"  {level} in flight: completion searches {closer.num_searches} "
              f"({closer.num_pooled} sent to workers, {closer.num_late} of them late; "
              f"{closer.search_seconds:.2f} s on the engine thread), outputs closed at the limit "
              f"{closer.num_closed} (tokens taken back {closer.num_taken_back}, appended "
              f"{closer.num_appended}), cut with no valid end found {closer.num_unclosed}",
              flush=True)
        closer.num_searches, closer.search_seconds, closer.num_closed = 0, 0.0, 0
        closer.num_pooled = closer.num_deferred = closer.num_late = 0
        closer.num_taken_back = closer.num_appended = closer.num_unclosed = 0
        cache_share = cache_hits / max(cache_hits + store.misses - misses0, 1)
        lengths = [len(o.outputs[0].token_ids) if o and not o.error else 0 for o in outs]
        errors = sum(1 for o in outs if o is None or o.error)
        for i, o in enumerate(outs):
            if o is not None and o.error:
                print(f"    error ({items[order[i]].kind} {items[order[i]].name}): "
                      f"{o.error[:300]}", flush=True)
        # Requests that ended before their first token (no valid end fits max_tokens) cost
        # nothing constrained; they are left out of the free run.
        kept = [i for i, n in enumerate(lengths) if n > 0]
        free = [SamplingParams(temperature=0, max_tokens=lengths[i], ignore_eos=True)
                for i in kept]
        gc.collect()
        tf, _, prof_f = run_closed_loop(llm, [prompts[i] for i in kept], free, level,
                                        not args.no_timeline)
        tokens = sum(lengths)
        rows.append((level, count, tokens, tf, tc, errors, count - len(kept), cache_share))
        if prof_c is not None:
            timelines.append((level, prof_f.summary(), prof_c.summary()))
            if args.dump_steps:
                with open(args.dump_steps, "a") as f:
                    for run, prof in (("free", prof_f), ("constrained", prof_c)):
                        for row in prof.step_rows():
                            f.write(json.dumps({"level": level, "run": run, **row}) + "\n")
        if first_outputs is None:
            first_outputs = [outs[order.index(i)] if i in order else None
                             for i in range(len(items))]

    print(f"\n{'in flight':>9} {'requests':>8} {'tokens':>7} {'free tok/s':>11} "
          f"{'constrained tok/s':>18} {'ratio':>6} {'errors':>6} {'no fit':>6} "
          f"{'cached masks':>12}")
    for level, count, tokens, tf, tc, errors, no_fit, share in rows:
        print(f"{level:>9} {count:>8} {tokens:>7} {tokens / tf:>11.1f} {tokens / tc:>18.1f} "
              f"{tf / tc:>5.2f}x {errors:>6} {no_fit:>6} {share:>12.0%}")
    print("no fit: constrained requests that ended at once, no valid end fitting max_tokens; "
          "cached masks: share of masks of repeated grammars served by the mask cache")
    for level, free, cons in timelines:
        print_timeline(level, free, cons)
    print_grammar_table(compile_times(llm, items), grammar_walks(llm, items, first_outputs))


if __name__ == "__main__":
    main()
