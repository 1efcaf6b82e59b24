"""tools + tool_choice (+ reasoning, + an answer format) -> one grammar constraint.

The grammar is Lark text in llguidance's dialect (it starts with `%llguidance {}`), written
by the model family's `ToolFormat`: each function's arguments are embedded as
`%json {schema}`, so every generated `arguments` value is valid against that function's
`parameters` by construction, and the call text around it is the family's own. The schema
first gets the exact-semantics rewrite that `response_format` schemas get
(`grammars/schema_rewrite.py`). After the last allowed call only EOS may follow, and at most
`max_parallel_calls` calls can be made.

With an `answer` format (a request's `response_format`: a JSON schema or any JSON object),
`tool_choice` "auto" lets the model either make valid calls or answer with JSON valid
against that schema (no free text); "required" and a named function allow calls only.
A model that reasons first (`<think>`, harmony's analysis channel) reasons unconstrained:
the grammar applies from the end of the reasoning.
"""

from __future__ import annotations

from typing import Any

from corral.grammars.param_error import ParamError
from corral.grammars.params import StructuredOutputsParams
from corral.tools.functions import FunctionSpec, parse_tool_choice, parse_tools
from corral.tools.lark_text import (
    answer_rule,
    answer_schema,
    arguments_schema,
    canonical,
    check_schema,
    json_rule,
)

MAX_PARALLEL_CALLS = 16
GRAMMAR_BACKEND = "llguidance"


def tool_call_constraint(
    tools: list[dict[str, Any]] | None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    *,
    answer: StructuredOutputsParams | None = None,
    max_parallel_calls: int = MAX_PARALLEL_CALLS,
    fmt: Any = None,
) -> StructuredOutputsParams | None:
    """The structured-output constraint for a chat request's tools, or None.

    tool_choice "none" (or no tools with "auto"/None) -> None: output is not constrained.
    "required" -> one or more calls (exactly one if `parallel_tool_calls` is False);
    {"type": "function", "function": {"name": X}} -> exactly one call of X;
    "auto" -> plain text that never contains the call marker, or any text followed by
    the marker and then only calls (the rest of the output is constrained); with an
    `answer` (JSON schema or JSON object), calls or that JSON, nothing else.
    `fmt` is the `ToolFormat` (Hermes `<tool_call>` blocks by default).
    Raises ValueError naming the field for bad tools, tool_choice or schemas.
    """
    _check_limits(parallel_tool_calls, max_parallel_calls)
    specs = parse_tools(tools)
    if parse_tool_choice(tool_choice, specs).mode == "none" or not specs:
        return None
    return chat_constraint(fmt, tools, tool_choice, parallel_tool_calls, answer=answer,
                           max_parallel_calls=max_parallel_calls)


def chat_constraint(
    fmt: Any,
    tools: list[dict[str, Any]] | None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    *,
    answer: StructuredOutputsParams | None = None,
    answer_field: str = "response_format",
    reasoning_mode: str = "off",
    max_reasoning_tokens: int | None = None,
    max_parallel_calls: int = MAX_PARALLEL_CALLS,
) -> StructuredOutputsParams | None:
    """The one constraint on a chat completion, or None when the output is free.

    As `tool_call_constraint`, and besides: with tools and tool_choice "none" the output
    may not hold the family's call marker (or it is the `answer`); a model that may reason
    (`reasoning_mode` from `fmt.reasoning_mode(prompt)`) reasons first, and with
    `max_reasoning_tokens` its reasoning is ended after that many tokens. Without tools,
    `answer` (from `answer_field`) is returned as it is when nothing comes before it.
    """
    from corral.tools.formats import HermesFormat

    fmt = fmt if fmt is not None else HermesFormat()
    _check_limits(parallel_tool_calls, max_parallel_calls)
    if max_reasoning_tokens is not None and (
            not isinstance(max_reasoning_tokens, int) or max_reasoning_tokens < 1):
        raise ParamError("max_reasoning_tokens", "must be a positive integer")
    specs = parse_tools(tools)
    choice = parse_tool_choice(tool_choice, specs)
    may_reason = reasoning_mode != "off"
    if not specs:
        if answer is not None and not may_reason and not fmt.frames_answer:
            return answer
        if answer is None and (not may_reason or max_reasoning_tokens is None):
            return None
        return _grammar(fmt.grammar([], None, 1, _answer_expr(answer, answer_field),
                                    reasoning_mode, max_reasoning_tokens))
    check_arguments(fmt, specs)
    if choice.mode == "none" and answer is not None and not may_reason \
            and not fmt.frames_answer:
        return answer
    expr = None
    if answer is not None and choice.mode == "auto":
        expr = json_rule(answer_schema(answer))
    elif answer is not None and choice.mode == "none":
        expr = answer_rule(answer, answer_field)
    max_calls = fmt.max_calls(parallel_tool_calls, max_parallel_calls)
    return _grammar(fmt.grammar(specs, choice, max_calls, expr, reasoning_mode,
                                max_reasoning_tokens))


def check_arguments(fmt: Any, specs: list[FunctionSpec]) -> None:
    """Fail closed: every tool's arguments schema must be enforceable in `fmt`."""
    for i, spec in enumerate(specs):
        check_schema(canonical(arguments_schema(spec.parameters)),
                     f"tools[{i}].function.parameters")
        fmt.check_function(spec, f"tools[{i}].function.parameters")


def _answer_expr(answer: StructuredOutputsParams | None, field: str) -> str | None:
    return answer_rule(answer, field) if answer is not None else None


def _grammar(text: str) -> StructuredOutputsParams:
    return StructuredOutputsParams(grammar=text, backend=GRAMMAR_BACKEND)


def _check_limits(parallel_tool_calls: Any, max_parallel_calls: Any) -> None:
    if not isinstance(parallel_tool_calls, bool):
        raise ParamError("parallel_tool_calls", "must be a boolean")
    if not isinstance(max_parallel_calls, int) or max_parallel_calls < 1:
        raise ParamError("max_parallel_calls", "must be a positive integer")
