"""Mistral (7B-Instruct v0.3 and its template family): `[TOOL_CALLS]` and a JSON list.

    [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]</s>

`[TOOL_CALLS]` is a control token, so the output is decoded with its special tokens and
the end-of-sequence text dropped again. The template accepts only call ids of exactly nine
letters and digits: Corral makes such ids, and maps any other id a client sends back
(OpenAI's `call_...`) to one, the same way for a call and for its result.
"""

from __future__ import annotations

import hashlib
import re
import string
from typing import Any

from corral.tools.events import new_short_call_id
from corral.tools.formats.base import ToolFormat
from corral.tools.functions import FunctionSpec
from corral.tools.lark_text import arguments_schema, json_rule, lit
from corral.tools.parser import CallSyntax, ToolCallParser
from corral.tools.prompt import native_messages

TOOL_CALLS = "[TOOL_CALLS]"
MISTRAL_SYNTAX = CallSyntax(start=TOOL_CALLS, end=None, new_id=new_short_call_id)
_ID_RE = re.compile(r"[A-Za-z0-9]{9}")
_ALPHABET = string.ascii_letters + string.digits


def short_call_id(call_id: str) -> str:
    """`call_id` if it is nine letters and digits, else nine derived from it (stable)."""
    if _ID_RE.fullmatch(call_id):
        return call_id
    number = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    chars = []
    for _ in range(9):
        number, digit = divmod(number, len(_ALPHABET))
        chars.append(_ALPHABET[digit])
    return "".join(chars)


class MistralFormat(ToolFormat):
    """`[TOOL_CALLS] [{"name": ..., "arguments": ...}, ...]` then EOS."""

    name = "mistral"
    call_marker = TOOL_CALLS
    token_texts = (TOOL_CALLS,)
    skip_special_tokens = False
    eos_texts = ("</s>",)

    def __init__(self, tokenizer: Any = None, reasoning: str | None = None) -> None:
        super().__init__(tokenizer, reasoning)
        eos = getattr(tokenizer, "eos_token", None)
        if isinstance(eos, str) and eos not in self.eos_texts:
            self.eos_texts = (*self.eos_texts, eos)

    def template_messages(self, chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
        messages = native_messages(chat)
        for message in messages:
            for call in message.get("tool_calls") or []:
                call["id"] = short_call_id(call["id"])
            if "tool_call_id" in message:
                message["tool_call_id"] = short_call_id(message["tool_call_id"])
        return messages

    def calls_rules(self, specs: list[FunctionSpec], max_calls: int) -> tuple[str, list[str]]:
        more = f' ({lit(", ")} call){{0,{max_calls - 1}}}' if max_calls > 1 else ""
        rules = ["call: " + " | ".join(f"fn_{i}" for i in range(len(specs)))]
        for i, spec in enumerate(specs):
            head = lit(f'{{"name": "{spec.name}", "arguments": ')
            rules.append(f'fn_{i}: {head} args_{i} "}}"')
            rules.append(f"args_{i}: {json_rule(arguments_schema(spec.parameters))}")
        return f'" [" call{more} "]"', rules

    def call_parser(self, tools: list[dict[str, Any]] | None) -> ToolCallParser:
        return ToolCallParser(tools, MISTRAL_SYNTAX)
