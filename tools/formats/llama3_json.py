"""Llama 3.1 / 3.2 / 3.3: a bare JSON call object is the whole answer.

    {"name": "get_weather", "parameters": {"city": "Paris"}}

The model makes one call per turn (its template refuses an assistant message with several),
and tool results come back in the `ipython` role. `<|python_tag|>` opens calls of Meta's
built-in tools only (brave_search, wolfram_alpha, code_interpreter), which Corral does not
offer; custom functions never use it.
"""

from __future__ import annotations

import json
from typing import Any

from corral.tools.formats.base import ToolFormat
from corral.tools.functions import FunctionSpec, ToolChoice
from corral.tools.lark_text import arguments_schema, json_rule, lit
from corral.tools.parser import CallSyntax, ToolCallParser
from corral.tools.prompt import native_messages

BARE_SYNTAX = CallSyntax(start=None, end=None)
# Text that starts like a call (after blanks, an object whose first key is "name").
_CALL_START = r'[ \t\r\n]*\{[ \t\r\n]*"name"(?s:.*)'


class Llama3JsonFormat(ToolFormat):
    """`{"name": ..., "parameters": ...}` as the whole answer; one call per turn."""

    name = "llama3_json"
    is_single_call = True

    def template_messages(self, chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One assistant message per call (the template takes one call a message), and a
        JSON tool result as a value (the template writes it with `tojson`)."""
        messages: list[dict[str, Any]] = []
        for message in native_messages(chat):
            if message["role"] == "tool":
                message["content"] = _json_value(message["content"])
            calls = message.get("tool_calls") or []
            if len(calls) > 1:
                messages += [{**message, "tool_calls": [call]} for call in calls]
            else:
                messages.append(message)
        return messages

    def body_rules(self, specs: list[FunctionSpec], choice: ToolChoice | None, max_calls: int,
                   answer: str | None) -> list[str]:
        if choice is None or (choice.mode == "none" and answer):
            return super().body_rules(specs, choice, max_calls, answer)
        if choice.mode == "none":
            return ["body: PLAIN", f"PLAIN: /(?s:.*)/ & ~/{_CALL_START}/"]
        if choice.mode == "named":
            specs = [s for s in specs if s.name == choice.name]
        rules = ["call: " + " | ".join(f"fn_{i}" for i in range(len(specs)))]
        for i, spec in enumerate(specs):
            head = lit(f'{{"name": {json.dumps(spec.name)}, "parameters": ')
            rules.append(f'fn_{i}: {head} args_{i} "}}"')
            rules.append(f"args_{i}: {json_rule(arguments_schema(spec.parameters))}")
        if choice.mode in ("named", "required"):
            return ["body: call", *rules]
        if answer:
            return [f"body: {answer} | call", *rules]
        # Plain text may not start with "{" at all: an object there is a call.
        # (Written without `&`/`~` so that llguidance can add token slices in it.)
        return ["body: PLAIN | call", r"PLAIN: /[ \t\r\n]*(?:[^ \t\r\n{](?s:.*))?/", *rules]

    def call_parser(self, tools: list[dict[str, Any]] | None) -> ToolCallParser:
        return ToolCallParser(tools, BARE_SYNTAX)


def _json_value(content: str) -> Any:
    """A JSON object or list as its value; any other text as it is."""
    try:
        value = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        return content
    return value if isinstance(value, (dict, list)) else content
