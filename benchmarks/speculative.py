"""Speculative decoding with the grammar: plain decoding against grammar-forced drafts
(fast-forward) and n-gram drafts, on the same JSON-heavy requests, in one run.

Two workloads from JSONSchemaBench (schemas from every split the default backend compiles):

- `schema`: "reply with JSON valid against this schema" (the schema in the prompt);
- `extract`: a valid instance of the schema is given in the prompt as text, and the model
  returns it as JSON under the schema (extraction and reformatting, where values are
  copied from the prompt).

Every request is greedy and constrained by its schema, so every mode must give the same
tokens (checked; exactly so in float32, while in bfloat16 a verification batch can round a
near-tie differently from a plain one); the script prints output tokens/s per mode, the
ratio to plain decoding, tokens per sequence-step (forward pass) and the share of drafts
accepted.

    python benchmarks/speculative.py                        # CPU, embedded model
    python benchmarks/speculative.py --device cuda --model <folder> --load-format dummy
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from structured_mix import run_closed_loop  # noqa: E402
from workload_mix import jsonschemabench, round_robin_by_split  # noqa: E402

from corral.engine import LLM, SamplingParams, StructuredOutputsParams  # noqa: E402
from corral.tools import render_chat_prompt  # noqa: E402

MODES = {"plain": {}, "fast-forward": {"fast_forward": True},
         "ngram": {"speculative": "ngram"}}


def workload(llm: LLM, num_schemas: int, seed: int) -> dict[str, list[tuple[str, dict]]]:
    """{workload: [(prompt, schema)]}, schemas the default backend compiles."""
    schema_reqs, extract_reqs = [], []
    for _, _, entry in round_robin_by_split(jsonschemabench(), seed):
        if len(schema_reqs) >= num_schemas:
            break
        schema = entry["schema"]
        try:
            llm.engine.grammar.compile(StructuredOutputsParams(json=schema))
        except ValueError:
            continue
        text = json.dumps(schema, separators=(",", ":"))
        if len(text) > 4000:
            continue
        ask = f"Reply with one JSON value that is valid against this JSON Schema:\n{text}"
        schema_reqs.append((_chat(llm, ask), schema))
        valid = [t["data"] for t in entry["tests"] if t["valid"]]
        if valid:
            record = json.dumps(valid[0], indent=1, ensure_ascii=False)
            ask = (f"Here is a record:\n{record}\n\nReturn this record as JSON valid against "
                   f"this JSON Schema:\n{text}")
            extract_reqs.append((_chat(llm, ask), schema))
    return {"schema": schema_reqs, "extract": extract_reqs}


def _chat(llm: LLM, text: str) -> str:
    return render_chat_prompt(llm.tokenizer, [{"role": "user", "content": text}])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--num-schemas", type=int, default=48)
    ap.add_argument("--concurrency", default="8,32")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--num-speculative-tokens", type=int, default=4)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]

    results: dict[tuple[str, int, str], tuple] = {}
    reference: dict[tuple[str, int], list] = {}
    mismatches: dict[str, int] = {}
    requests = None
    for mode in args.modes.split(","):
        llm = LLM(args.model, device=args.device, dtype=args.dtype, load_format=args.load_format,
                  max_num_seqs=max(levels), max_model_len=4096, enable_prefix_caching=False,
                  num_speculative_tokens=args.num_speculative_tokens, **MODES[mode])
        engine = llm.engine
        if requests is None:
            requests = workload(llm, args.num_schemas, args.seed)
            device = (torch.cuda.get_device_name() if engine.runner.device.type == "cuda"
                      else f"CPU ({torch.get_num_threads()} threads)")
            print(f"model {engine.model_name} ({args.load_format} weights, "
                  f"{engine.runner.dtype}); {device}; "
                  + ", ".join(f"{k}: {len(v)} requests" for k, v in requests.items()))
        llm.generate(requests["schema"][0][0], SamplingParams(max_tokens=4))  # warm-up
        for reqs in requests.values():  # compiled before the clock starts, in every mode
            for _, schema in reqs:
                engine.grammar.compile(StructuredOutputsParams(json=schema))
        for name, reqs in requests.items():
            prompts = [engine.tokenize(p) for p, _ in reqs]
            params = [SamplingParams(temperature=0, max_tokens=args.max_tokens,
                                     structured_outputs=StructuredOutputsParams(json=s))
                      for _, s in reqs]
            for level in levels:
                gc.collect()
                stats0 = dict(vars(engine.get_stats()))
                seconds, outs, _ = run_closed_loop(llm, prompts, params, level, False)
                stats = vars(engine.get_stats())
                delta = {k: stats[k] - stats0[k] for k in
                         ("generation_tokens_total", "num_decode_passes",
                          "spec_draft_tokens_total", "spec_accepted_tokens_total")}
                tokens = [o.outputs[0].token_ids for o in outs]
                key = (name, level)
                if key not in reference:
                    reference[key] = tokens
                else:
                    mismatches[mode] = mismatches.get(mode, 0) + sum(
                        a != b for a, b in zip(reference[key], tokens, strict=True))
                results[(name, level, mode)] = (sum(map(len, tokens)), seconds, delta)
        engine.shutdown()
        del llm, engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    print(f"\n{'workload':<9} {'in flight':>9} {'mode':<13} {'tokens':>7} {'tok/s':>8} "
          f"{'vs plain':>8} {'tok/pass':>8} {'drafts':>7} {'accepted':>8}")
    for (name, level, mode), (tokens, seconds, d) in results.items():
        plain = results.get((name, level, "plain"))
        ratio = (tokens / seconds) / (plain[0] / plain[1]) if plain else float("nan")
        per_pass = d["generation_tokens_total"] / max(d["num_decode_passes"], 1)
        drafts = d["spec_draft_tokens_total"]
        accepted = d["spec_accepted_tokens_total"] / drafts if drafts else 0.0
        print(f"{name:<9} {level:>9} {mode:<13} {tokens:>7} {tokens / seconds:>8.1f} "
              f"{ratio:>7.2f}x {per_pass:>8.2f} {drafts:>7} {accepted:>8.0%}")
    print("greedy outputs differing from plain decoding: "
          + (", ".join(f"{m} {n}" for m, n in mismatches.items()) or "none compared"))


if __name__ == "__main__":
    main()
