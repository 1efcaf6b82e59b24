"""Constrained outputs cut by `max_tokens`: do they still parse and validate?

Draws JSONSchemaBench schemas round robin over every split (those the default backend
compiles) and asks the model for a JSON value valid against each, at several `max_tokens`
budgets, with the structure closer on (the default). Each output is counted as:

- valid: parses and validates against its schema (with format checks);
- no fit: ended at once with no output and finish_reason "length", because no valid end of
  the grammar fitted the budget;
- invalid: anything else (must be 0).

With `--compare-cut`, the same requests with `close_structures` off are counted too.

    python benchmarks/always_valid.py                       # CPU, embedded model
    python benchmarks/always_valid.py --num-schemas 100 --max-tokens 24 48 96
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jsonschema  # noqa: E402
from workload_mix import compile_check, schema_items  # noqa: E402

from corral.engine import LLM, SamplingParams  # noqa: E402

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def verdict(schema: dict, completion) -> str:
    """'valid', 'no fit' or 'invalid: <why>' for one output."""
    if completion.finish_reason == "length" and not completion.token_ids:
        return "no fit"
    try:
        value = json.loads(completion.text)
    except json.JSONDecodeError as e:
        return f"invalid: does not parse ({e.msg}, finish_reason {completion.finish_reason})"
    validator = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(
        validator(schema, format_checker=FORMATS).iter_errors(value)
    )
    return "valid" if error is None else f"invalid: {error.message[:120]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-schemas", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[24, 48, 96])
    ap.add_argument(
        "--compare-cut",
        action="store_true",
        help="also count the outputs with close_structures off",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    llm = LLM(args.model, device=args.device, max_num_seqs=64)
    engine = llm.engine

    compiles = compile_check(engine)

    items = schema_items(compiles, args.num_schemas, args.seed)
    splits = Counter(item.name.split("/")[0] for item in items)
    per_split = ", ".join(f"{k} {v}" for k, v in sorted(splits.items()))
    print(
        f"{len(items)} JSONSchemaBench schemas ({per_split}); model {engine.model_name} on "
        f"{engine.runner.device}"
    )
    prompts = [item.prompt(engine.tokenizer) for item in items]
    modes = [True, False] if args.compare_cut else [True]
    print(
        f"\n{'max_tokens':>10} {'closer':>7} {'valid':>6} {'no fit':>7} {'invalid':>8} "
        f"{'closed':>7} {'seconds':>8}"
    )
    failures = 0
    for max_tokens in args.max_tokens:
        for close in modes:
            params = [
                SamplingParams(
                    temperature=0,
                    max_tokens=max_tokens,
                    close_structures=close,
                    structured_outputs=item.constraint,
                )
                for item in items
            ]
            closed_before = engine.closer.num_closed
            start = time.perf_counter()
            outputs = llm.generate(prompts, params)
            seconds = time.perf_counter() - start
            counts: Counter = Counter()
            for item, out in zip(items, outputs, strict=True):
                result = verdict(
                    json.loads(item.constraint.json)
                    if isinstance(item.constraint.json, str)
                    else item.constraint.json,
                    out.outputs[0],
                )
                counts[result.split(":")[0]] += 1
                if close and result.startswith("invalid"):
                    failures += 1
                    print(f"  {item.name}: {result}\n    {out.outputs[0].text[:200]!r}")
            print(
                f"{max_tokens:>10} {'on' if close else 'off':>7} {counts['valid']:>6} "
                f"{counts['no fit']:>7} {counts['invalid']:>8} "
                f"{engine.closer.num_closed - closed_before:>7} {seconds:>8.1f}",
                flush=True,
            )
    print(
        "\nvalid: parses and validates; no fit: no valid end fitted max_tokens (empty "
        "output, finish_reason length); closed: outputs the closer steered to a valid end"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
