"""BFCL test data as OpenAI-format tools (the rewrite BFCL's own harness does for OpenAI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# BFCL's type names (Python, Java and JavaScript flavours) -> JSON Schema types.
_TYPES = {
    "dict": "object", "HashMap": "object", "object": "object",
    "float": "number", "double": "number", "number": "number",
    "integer": "integer", "long": "integer", "int": "integer",
    "boolean": "boolean", "Boolean": "boolean",
    "array": "array", "Array": "array", "ArrayList": "array", "tuple": "array", "list": "array",
    "string": "string", "String": "string", "char": "string", "any": "string",
}

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "simple_java",
              "simple_javascript", "live_simple", "live_multiple", "live_parallel",
              "live_parallel_multiple"]


def openai_name(name: str) -> str:
    return name.replace(".", "_")


def to_json_schema(schema: Any) -> Any:
    """One BFCL parameter schema as JSON Schema (unknown types become strings)."""
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if k != "optional"}
    if "type" in out:
        out["type"] = _TYPES.get(out["type"], "string")
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: to_json_schema(v) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = to_json_schema(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(out["additionalProperties"])
    return out


def to_openai_tool(function: dict[str, Any]) -> dict[str, Any]:
    parameters = to_json_schema(function["parameters"])
    parameters["type"] = "object"
    return {"type": "function", "function": {
        "name": openai_name(function["name"]),
        "description": function.get("description", ""),
        "parameters": parameters,
    }}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_category(datasets_dir: Path, category: str) -> list[dict[str, Any]]:
    """Entries of one category, each with "tools" (OpenAI format) and, where BFCL has it,
    "ground_truth" (a list of {openai_name: {param: [acceptable values]}})."""
    folder = datasets_dir / "bfcl"
    entries = read_jsonl(folder / f"BFCL_v4_{category}.json")
    answers_path = folder / "possible_answer" / f"BFCL_v4_{category}.json"
    answers = {a["id"]: a["ground_truth"] for a in read_jsonl(answers_path)} \
        if answers_path.exists() else {}
    for entry in entries:
        entry["tools"] = [to_openai_tool(f) for f in entry["function"]]
        if entry["id"] in answers:
            entry["ground_truth"] = [{openai_name(n): args for n, args in call.items()}
                                     for call in answers[entry["id"]]]
    return entries


def first_acceptable(ground_truth_call: dict[str, list]) -> dict[str, Any]:
    """One concrete arguments object from a ground-truth call: each parameter's first
    acceptable value; parameters that may be left out ("" among the values) are left out."""
    arguments = {}
    for param, values in ground_truth_call.items():
        if "" in values or not values:
            continue
        value = values[0]
        if isinstance(value, dict):
            value = first_acceptable(value)
        arguments[param] = value
    return arguments


def in_schema_order(value: Any, schema: dict[str, Any]) -> Any:
    """`value` with object keys in the order of the schema's properties (the order llguidance,
    like OpenAI's strict mode, generates them in)."""
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        ordered = {k: in_schema_order(value[k], props[k]) for k in props if k in value}
        ordered.update({k: v for k, v in value.items() if k not in props})
        return ordered
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [in_schema_order(v, schema["items"]) for v in value]
    return value
