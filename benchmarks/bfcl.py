"""BFCL (Berkeley Function Calling Leaderboard) single-turn categories through `corral serve`.

For each category the script sends `question[0]` with the category's functions as OpenAI
tools (`tool_choice="auto"` by default, temperature 0) twice: with the tool-call grammar
(the default) and with it turned off (`constrain_tool_calls: false`, a Corral extension).
It prints, per category and mode:

- `calls`: answers that made at least one call;
- `valid`: of the answers with calls, the share whose every call names one of the tools and
  has JSON arguments valid against that tool's (converted) schema; with the grammar this
  must be 100%; a last call cut by `max_tokens` (counted under `cut`) is left out of it;
- `accuracy`: BFCL's AST-style score, re-implemented here from the rules in the dataset's
  README (call count, names, required and unknown parameters, acceptable values with string
  normalisation, any order for parallel categories); irrelevance counts "no call" correct.

    make serve    # or: corral serve --port 8000
    python benchmarks/bfcl.py --limit 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema

CATEGORIES = {
    "simple": "BFCL_v4_simple_python.json",
    "multiple": "BFCL_v4_multiple.json",
    "parallel": "BFCL_v4_parallel.json",
    "parallel_multiple": "BFCL_v4_parallel_multiple.json",
    "irrelevance": "BFCL_v4_irrelevance.json",
}
_TYPE_MAP = {"dict": "object", "float": "number", "double": "number", "tuple": "array",
             "list": "array", "any": "string", "integer": "integer", "int": "integer",
             "long": "integer", "short": "integer", "byte": "integer", "string": "string",
             "char": "string", "boolean": "boolean", "bool": "boolean", "number": "number",
             "object": "object", "array": "array", "hashmap": "object", "arraylist": "array",
             "null": "null"}
_STRIP = re.compile(r"[ ,./\-_*^]")


def dataset_dir() -> Path:
    root = os.environ.get("CORRAL_DATASETS")
    base = Path(root) if root else Path(__file__).resolve().parents[1] / ".." / "shared" / \
        "datasets"
    return base / "bfcl"


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- BFCL functions -> OpenAI tools ----


def convert_schema(node: Any) -> Any:
    """BFCL's dialect of JSON Schema -> JSON Schema (types mapped, unknown types -> string)."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, str):
            out["type"] = _TYPE_MAP.get(value.lower(), "string")
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {k: convert_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = convert_schema(value)
        elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
            out[key] = [convert_schema(v) for v in value]
        elif key in ("default", "optional", "format"):
            continue
        else:
            out[key] = value
    if out.get("type") == "array" and "items" in out and not isinstance(out["items"], dict):
        out.pop("items")
    return out


def tool_name(name: str) -> str:
    return name.replace(".", "_")


def to_tools(functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tools = []
    for fn in functions:
        params = convert_schema(fn.get("parameters") or {"type": "object", "properties": {}})
        params["type"] = "object"
        tools.append({"type": "function", "function": {
            "name": tool_name(fn["name"]), "description": fn.get("description", ""),
            "parameters": params}})
    return tools


# ---- scoring ----


def _norm(value: Any) -> Any:
    return _STRIP.sub("", value.lower()) if isinstance(value, str) else value


def value_ok(value: Any, acceptable: Any) -> bool:
    """One value against one acceptable value (nested lists and dicts recursively)."""
    if isinstance(acceptable, str):
        return isinstance(value, str) and _norm(value) == _norm(acceptable)
    if isinstance(acceptable, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(acceptable, bool) and value == acceptable
    if isinstance(acceptable, (int, float)):
        if isinstance(acceptable, int) and isinstance(value, float):
            return False
        return isinstance(value, (int, float)) and float(value) == float(acceptable)
    if isinstance(acceptable, list):
        return isinstance(value, list) and len(value) == len(acceptable) and all(
            value_ok(v, a) for v, a in zip(value, acceptable, strict=True))
    if isinstance(acceptable, dict):
        return isinstance(value, dict) and args_ok(value, acceptable, None)
    return value == acceptable


def args_ok(args: dict[str, Any], expected: dict[str, list[Any]],
            schema: dict[str, Any] | None) -> bool:
    """Arguments against `{param: [acceptable values]}` ("" = may be left out)."""
    if schema is not None:
        props = schema.get("properties", {})
        if any(k not in props for k in args):
            return False
        if any(r not in args for r in schema.get("required", [])):
            return False
    for param, acceptable in expected.items():
        options = acceptable if isinstance(acceptable, list) else [acceptable]
        if param not in args:
            if "" not in options:
                return False
            continue
        if not any(value_ok(args[param], a) for a in options if a != ""):
            return False
    return all(k in expected for k in args)


def calls_ok(calls: list[tuple[str, dict[str, Any]]], truth: list[dict[str, Any]],
             schemas: dict[str, dict[str, Any]]) -> bool:
    """The calls match the ground truth one to one, in any order."""
    if len(calls) != len(truth):
        return False
    wanted = [(tool_name(next(iter(t))), next(iter(t.values()))) for t in truth]

    def match(i: int, used: frozenset[int]) -> bool:
        if i == len(calls):
            return True
        name, args = calls[i]
        for j, (w_name, w_args) in enumerate(wanted):
            if j not in used and name == w_name and args_ok(args, w_args, schemas.get(name)) \
                    and match(i + 1, used | {j}):
                return True
        return False

    return match(0, frozenset())


# ---- running ----


async def ask(client: Any, model: str, entry: dict[str, Any], constrained: bool,
              max_tokens: int, tool_choice: str, parallel: bool,
              sem: asyncio.Semaphore) -> dict[str, Any]:
    tools = to_tools(entry["function"])
    async with sem:
        response = await client.chat.completions.create(
            model=model, messages=entry["question"][0], tools=tools, tool_choice=tool_choice,
            temperature=0, max_tokens=max_tokens,
            parallel_tool_calls=parallel, extra_body={"constrain_tool_calls": constrained})
    choice = response.choices[0]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    parsed: list[tuple[str, dict[str, Any]]] = []
    valid = True
    calls = list(choice.message.tool_calls or [])
    if choice.finish_reason == "length" and calls:
        calls = calls[:-1]  # the last call was cut by max_tokens: it may be partial
    for tc in calls:
        try:
            args = json.loads(tc.function.arguments)
            jsonschema.validate(args, schemas[tc.function.name])
        except (KeyError, json.JSONDecodeError, jsonschema.ValidationError,
                jsonschema.SchemaError):
            valid = False
            args = None
        parsed.append((tc.function.name, args if isinstance(args, dict) else {}))
    return {"calls": parsed, "valid": valid, "schemas": schemas,
            "finish": choice.finish_reason, "tokens": response.usage.completion_tokens}


async def run(args: argparse.Namespace) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, timeout=600)
    models = await client.models.list()
    model = models.data[0].id
    root = dataset_dir()
    if not root.is_dir():
        print(f"BFCL data not found at {root} (set CORRAL_DATASETS)", file=sys.stderr)
        return 2
    sem = asyncio.Semaphore(args.concurrency)
    rows = []
    for category in args.categories:
        entries = load(root / CATEGORIES[category])[: args.limit]
        truth = {}
        answers = root / "possible_answer" / CATEGORIES[category]
        if answers.exists():
            truth = {e["id"]: e["ground_truth"] for e in load(answers)}
        parallel = args.parallel_tool_calls == "true" or (
            args.parallel_tool_calls == "category" and category.startswith("parallel"))
        for constrained in args.modes:
            start = time.monotonic()
            results = await asyncio.gather(*(ask(client, model, e, constrained,
                                                 args.max_tokens, args.tool_choice,
                                                 parallel, sem)
                                             for e in entries))
            seconds = time.monotonic() - start
            with_calls = [r for r in results if r["calls"]]
            correct = 0
            for e, r in zip(entries, results, strict=True):
                if category == "irrelevance":
                    correct += not r["calls"]
                else:
                    correct += r["valid"] and calls_ok(r["calls"], truth[e["id"]], r["schemas"])
            cut = sum(r["finish"] == "length" for r in results)
            rows.append((category, "grammar" if constrained else "off", len(entries),
                         len(with_calls), sum(r["valid"] for r in with_calls), cut, correct,
                         sum(r["tokens"] for r in results), seconds))
            print_row(rows[-1], flush=True)
    print()
    print_table(rows, model, f"tool_choice={args.tool_choice}, "
                f"parallel_tool_calls={args.parallel_tool_calls}")
    return 0


def print_row(row: tuple, flush: bool = False) -> None:
    category, mode, n, calls, valid, cut, correct, tokens, seconds = row
    share = f"{100 * valid / calls:.1f}%" if calls else "-"
    print(f"{category:<18} {mode:<8} {n:>4} {calls:>6} {share:>8} {cut:>4} "
          f"{100 * correct / n:>8.1f}% {tokens:>7} {seconds:>7.1f}", flush=flush)


def print_table(rows: list[tuple], model: str, settings: str) -> None:
    print(f"BFCL single-turn, model {model}, {settings}, temperature 0")
    print(f"{'category':<18} {'tools':<8} {'n':>4} {'calls':>6} {'valid':>8} {'cut':>4} "
          f"{'accuracy':>9} "
          f"{'tokens':>7} {'seconds':>7}")
    for row in rows:
        print_row(row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default=os.environ.get("CORRAL_BASE_URL",
                                                             "http://127.0.0.1:8000/v1"))
    parser.add_argument("--api-key", default=os.environ.get("CORRAL_API_KEY", "none"))
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES),
                        choices=list(CATEGORIES))
    parser.add_argument("--limit", type=int, default=20, help="entries per category")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--tool-choice", default="auto", choices=["auto", "required"],
                        help="BFCL uses auto; required forces a call (wrong for irrelevance)")
    parser.add_argument("--parallel-tool-calls", default="true",
                        choices=["true", "false", "category"],
                        help="category: true only for the parallel* categories")
    parser.add_argument("--modes", nargs="+", default=["grammar", "off"],
                        choices=["grammar", "off"])
    args = parser.parse_args(argv)
    args.modes = [m == "grammar" for m in args.modes]
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
