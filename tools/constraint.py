"""tools + tool_choice -> a grammar constraint that only lets valid calls out.

The grammar is Lark text in llguidance's dialect (it starts with `%llguidance {}`): each
function's arguments are embedded as `%json {schema}`, so every generated `arguments` value
is valid against that function's `parameters` by construction, and the call text around it
is fixed (see `call_format`). The schema first gets the exact-semantics rewrite that
`response_format` schemas get (`grammars/schema_rewrite.py`). Every grammar ends: after the
last allowed call only EOS may follow, and at most `max_parallel_calls` calls can be made.

With an `answer` format (a request's `response_format`: a JSON schema or any JSON object),
`tool_choice` "auto" lets the model either make valid calls or answer with JSON valid
against that schema (no free text); "required" and a named function allow calls only.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import llguidance

from corral.grammars.param_error import ParamError
from corral.grammars.params import StructuredOutputsParams
from corral.grammars.schema_rewrite import rewrite_schema
from corral.tools.call_format import (
    CALL_SEPARATOR,
    CALL_START,
    CALL_SUFFIX,
    JSON_LAYOUT,
    call_prefix,
)
from corral.tools.functions import FunctionSpec, ToolChoice, parse_tool_choice, parse_tools

MAX_PARALLEL_CALLS = 16
# A JSON answer is compact, as `response_format` output is.
ANSWER_LAYOUT = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
GRAMMAR_BACKEND = "llguidance"


def tool_call_constraint(
    tools: list[dict[str, Any]] | None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    *,
    answer: StructuredOutputsParams | None = None,
    max_parallel_calls: int = MAX_PARALLEL_CALLS,
) -> StructuredOutputsParams | None:
    """The structured-output constraint for a chat request's tools, or None.

    tool_choice "none" (or no tools with "auto"/None) -> None: output is not constrained.
    "required" -> one or more calls (exactly one if `parallel_tool_calls` is False);
    {"type": "function", "function": {"name": X}} -> exactly one call of X;
    "auto" -> plain text that never contains the call marker, or any text followed by
    the marker and then only calls (the rest of the output is constrained); with an
    `answer` (JSON schema or JSON object), calls or that JSON, nothing else.
    Raises ValueError naming the field for bad tools, tool_choice or schemas.
    """
    if not isinstance(parallel_tool_calls, bool):
        raise ParamError("parallel_tool_calls", "must be a boolean")
    if not isinstance(max_parallel_calls, int) or max_parallel_calls < 1:
        raise ParamError("max_parallel_calls", "must be a positive integer")
    specs = parse_tools(tools)
    choice = parse_tool_choice(tool_choice, specs)
    if choice.mode == "none" or not specs:
        return None
    for i, spec in enumerate(specs):
        _check_arguments_schema(_canonical(_arguments_schema(spec)), f"tools[{i}]",
                                "function.parameters")
    answer_schema = _answer_schema(answer) if answer is not None else None
    max_calls = max_parallel_calls if parallel_tool_calls else 1
    return StructuredOutputsParams(
        grammar=build_tool_grammar(specs, choice, max_calls, answer_schema),
        backend=GRAMMAR_BACKEND,
    )


def build_tool_grammar(specs: list[FunctionSpec], choice: ToolChoice, max_calls: int,
                       answer_schema: dict[str, Any] | None = None) -> str:
    """The Lark (llguidance dialect) text for validated specs and choice (and, for "auto",
    the JSON answer allowed instead of calls)."""
    if choice.mode == "none":
        raise ParamError("tool_choice", "'none' has no tool grammar")
    if choice.mode == "named":
        specs = [s for s in specs if s.name == choice.name]
        max_calls = 1
    more = f' ({_lit(CALL_SEPARATOR)} call){{0,{max_calls - 1}}}' if max_calls > 1 else ""
    lines = ["%llguidance {}"]
    if choice.mode == "auto" and answer_schema is not None:
        lines += [f"start: answer | call{more}",
                  f"answer: %json {_canonical(answer_schema)}"]
    elif choice.mode == "auto":
        # `plain` can never contain the marker; `head` is any text up to the first marker
        # (lazy: it ends there), after which only calls may follow.
        marker = _regex_escape(CALL_START)
        lines += [
            f"start: plain | head fn{more}",
            "plain: PLAIN",
            f"PLAIN: /(?s:.*)/ & ~/(?s:.*){marker}(?s:.*)/",
            f"head[lazy]: /(?s:.*){marker}/",
        ]
    else:
        lines.append(f"start: call{more}")
    # A call is CALL_START, then one function's fixed text, arguments and CALL_SUFFIX.
    lines += [
        f"call: {_lit(CALL_START)} fn",
        "fn: " + " | ".join(f"fn_{i}" for i in range(len(specs))),
    ]
    for i, spec in enumerate(specs):
        head = _lit(call_prefix(spec.name).removeprefix(CALL_START))
        lines.append(f"fn_{i}: {head} args_{i} {_lit(CALL_SUFFIX)}")
        lines.append(f"args_{i}: %json {_canonical(_arguments_schema(spec))}")
    return "\n".join(lines) + "\n"


def _answer_schema(answer: StructuredOutputsParams) -> dict[str, Any]:
    """The schema of a JSON answer beside the calls, laid out as `response_format` output."""
    if answer.json_object:
        schema: Any = {"type": "object"}
    elif answer.json is not None and isinstance(answer.json, dict):
        schema = rewrite_schema(answer.json)
    else:
        raise ParamError("response_format", "only a JSON schema or a JSON object can be "
                                            "combined with tools")
    schema = dict(schema)
    schema["x-guidance"] = dict(ANSWER_LAYOUT)
    _check_arguments_schema(_canonical(schema), "response_format", "json_schema.schema")
    return schema


def _lit(text: str) -> str:
    """A Lark string literal for `text` (JSON string escapes are what llguidance reads)."""
    return json.dumps(text)


def _regex_escape(text: str) -> str:
    """Escape regex metacharacters for a /.../ literal (Rust regex syntax)."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$/" else c for c in text)


def _arguments_schema(spec: FunctionSpec) -> dict[str, Any]:
    """The schema compiled for `spec`'s arguments: `parameters` rewritten for exact semantics
    (ECMA `pattern`s, exact `format`s; as `response_format` schemas are) plus the call layout.
    """
    schema = rewrite_schema(spec.parameters)
    schema["x-guidance"] = dict(JSON_LAYOUT)
    return schema


def _canonical(schema: dict[str, Any]) -> str:
    return json.dumps(schema, ensure_ascii=False)


@lru_cache(maxsize=1024)
def _check_arguments_schema(schema_json: str, where: str, field: str) -> None:
    """Fail closed: a schema llguidance cannot enforce is refused, naming the field
    (`where`.`field`: a tool's parameters, or the response format's schema)."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json)
    except ValueError as e:
        raise ParamError(f"{where}.{field}", str(e)) from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ParamError(f"{where}.{field}", f"cannot be enforced ({messages[0]})")
