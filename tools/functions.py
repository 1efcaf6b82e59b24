"""OpenAI-format tools and tool_choice, validated into plain values.

Every other module of `corral.tools` works on `FunctionSpec`s, never on raw request dicts,
so each rule about what a valid tool is lives here once.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema

from corral.grammars.param_error import ParamError

# OpenAI's rule for function names.
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOOL_CHOICE_MODES = ("none", "auto", "required")


@dataclass(frozen=True)
class FunctionSpec:
    """One callable function: its name, description and arguments schema.

    `parameters` is always a JSON Schema whose instances are objects (a tool that declares
    no parameters gets the schema of the empty object).
    """

    name: str
    description: str | None
    parameters: dict[str, Any]
    strict: bool = False

    def to_openai(self) -> dict[str, Any]:
        """The tool in OpenAI's request format (what chat templates and prompts show)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    """A validated tool_choice: a mode, and for a named choice the function's name."""

    mode: str  # "none" | "auto" | "required" | "named"
    name: str | None = None


def parse_tools(
    tools: list[dict[str, Any]] | None, check_schemas: bool = True
) -> list[FunctionSpec]:
    """Validate OpenAI-format `tools` into FunctionSpecs (ValueError naming the field).

    `check_schemas=False` skips checking each `parameters` against the JSON Schema
    meta-schema (for callers that only need the names).
    """
    if tools is None:
        return []
    if not isinstance(tools, (list, tuple)):
        raise ParamError("tools", "must be a list of tool objects")
    specs: list[FunctionSpec] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        spec = _parse_tool(tool, f"tools[{i}]", check_schemas)
        if spec.name in seen:
            raise ParamError(f"tools[{i}].function.name", f"duplicate function name {spec.name!r}")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def _parse_tool(tool: Any, where: str, check_schemas: bool) -> FunctionSpec:
    if isinstance(tool, FunctionSpec):
        return tool
    if not isinstance(tool, dict):
        raise ParamError(where, "must be an object")
    kind = tool.get("type", "function")
    if kind != "function":
        raise ParamError(f"{where}.type", f"only 'function' tools are supported (got {kind!r})")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise ParamError(f"{where}.function", "must be an object with at least a name")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ParamError(f"{where}.function.name", "every tool needs a non-empty name")
    if not _NAME_RE.match(name):
        raise ParamError(
            f"{where}.function.name", f"{name!r} must match ^[a-zA-Z0-9_-]{{1,64}}$"
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise ParamError(f"{where}.function.description", "must be a string")
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ParamError(f"{where}.function.strict", "must be a boolean")
    parameters = _parse_parameters(function.get("parameters"), f"{where}.function.parameters",
                                   check_schemas)
    return FunctionSpec(name, description, parameters, bool(strict))


def _parse_parameters(parameters: Any, where: str, check_schema: bool) -> dict[str, Any]:
    if parameters is None:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    if not isinstance(parameters, dict):
        raise ParamError(where, "must be a JSON Schema object")
    schema = copy.deepcopy(parameters)
    kind = schema.get("type")
    if kind is None:
        schema["type"] = "object"
    elif kind != "object" and not (isinstance(kind, list) and kind == ["object"]):
        raise ParamError(where, f"the schema's type must be 'object' (got {kind!r})")
    if check_schema:
        _check_schema(json.dumps(schema, sort_keys=True), where)
    return schema


@lru_cache(maxsize=1024)
def _check_schema(schema_json: str, where: str) -> None:
    """Check against the meta-schema (about 10 ms a schema, so agents' repeats are cached)."""
    try:
        jsonschema.Draft202012Validator.check_schema(json.loads(schema_json))
    except jsonschema.SchemaError as e:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        raise ParamError(f"{where}{path}", f"not a valid JSON Schema ({e.message})") from None


def parse_tool_choice(tool_choice: Any, specs: list[FunctionSpec]) -> ToolChoice:
    """Validate `tool_choice` against the tools; None means OpenAI's default.

    The default is "auto" when there are tools and "none" when there are none.
    """
    if tool_choice is None:
        return ToolChoice("auto" if specs else "none")
    if isinstance(tool_choice, str):
        if tool_choice not in TOOL_CHOICE_MODES:
            raise ParamError(
                "tool_choice", f"must be one of {', '.join(TOOL_CHOICE_MODES)} or a named "
                f"function (got {tool_choice!r})"
            )
        if tool_choice == "required" and not specs:
            raise ParamError("tool_choice", "'required' needs at least one tool in tools")
        return ToolChoice(tool_choice)
    if not isinstance(tool_choice, dict):
        raise ParamError("tool_choice", "must be a string or {'type': 'function', ...}")
    if tool_choice.get("type") != "function":
        raise ParamError(
            "tool_choice.type", f"only 'function' is supported (got {tool_choice.get('type')!r})"
        )
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise ParamError("tool_choice.function.name", "must name one of the tools")
    if name not in {s.name for s in specs}:
        raise ParamError("tool_choice.function.name", f"{name!r} is not one of the tools")
    return ToolChoice("named", name)
