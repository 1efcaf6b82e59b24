"""Hermes / Qwen2.5 / Qwen3: `<tool_call>` blocks of JSON, one block per call.

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Also Corral's built-in format for templates that know nothing of tools (SmolLM2): the tools
then go into the system message through Corral's own tool prompt (`prompt.py`).
"""

from __future__ import annotations

from typing import Any

from corral.tools.call_format import CALL_END, CALL_SEPARATOR, CALL_START, CALL_SUFFIX, call_prefix
from corral.tools.formats.base import ToolFormat
from corral.tools.functions import FunctionSpec
from corral.tools.lark_text import arguments_schema, json_rule, lit
from corral.tools.parser import HERMES_SYNTAX, ToolCallParser
from corral.tools.prompt import render_hermes_prompt


class HermesFormat(ToolFormat):
    """`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>` blocks."""

    name = "hermes"
    call_marker = CALL_START
    token_texts = (CALL_START, CALL_END)

    def render_prompt(self, tokenizer: Any, chat: list[dict[str, Any]],
                      specs: list[FunctionSpec], *, add_generation_prompt: bool = True,
                      template_kwargs: dict[str, Any] | None = None) -> str:
        return render_hermes_prompt(tokenizer, chat, specs, add_generation_prompt,
                                    template_kwargs)

    def calls_rules(self, specs: list[FunctionSpec], max_calls: int) -> tuple[str, list[str]]:
        more = f" ({lit(CALL_SEPARATOR)} call){{0,{max_calls - 1}}}" if max_calls > 1 else ""
        seq = self.markers.seq
        rules = [f"call: {seq(CALL_START)} fn",
                 "fn: " + " | ".join(f"fn_{i}" for i in range(len(specs)))]
        for i, spec in enumerate(specs):
            head = seq(call_prefix(spec.name).removeprefix(CALL_START))
            rules.append(f"fn_{i}: {head} args_{i} {seq(CALL_SUFFIX)}")
            rules.append(f"args_{i}: {json_rule(arguments_schema(spec.parameters))}")
        return f"fn{more}", rules

    def call_parser(self, tools: list[dict[str, Any]] | None) -> ToolCallParser:
        return ToolCallParser(tools, HERMES_SYNTAX)
