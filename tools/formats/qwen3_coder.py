"""Qwen3-Coder: XML-like calls, one parameter per tag, values written raw.

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    <parameter=days>
    3
    </parameter>
    </function>
    </tool_call>

(exactly as its chat template renders history; parallel calls are blocks joined by "\\n").
A string value is the raw text; numbers, objects and arrays are JSON text; booleans are
written `true`/`false` (the template writes Python's `True`/`False`, also accepted).

The grammar holds each value to its property's schema: JSON values through `%json`, strings
as raw text (an `enum`/`const` as its literals, `minLength`/`maxLength` as a length range).
A string keyword raw text cannot be held to (`pattern`, `format`) and a `parameters` schema
that is not a plain object of properties are refused (fail closed).
"""

from __future__ import annotations

import copy
from typing import Any

from corral.grammars.param_error import ParamError
from corral.grammars.schema_rewrite import rewrite_schema
from corral.tools.call_format import CALL_END, CALL_START
from corral.tools.formats.base import ToolFormat
from corral.tools.formats.qwen3_coder_parser import XmlCallParser, value_kinds
from corral.tools.functions import FunctionSpec
from corral.tools.lark_text import JSON_LAYOUT, json_rule, lit

NEWLINE = "\n"
PARAM_END = "\n</parameter>\n"
# Keywords a raw string value can be held to (the rest of a string schema is refused).
_STRING_KEYWORDS = {"type", "description", "title", "enum", "const", "minLength",
                    "maxLength", "default", "examples"}
# Keywords of `parameters` itself that the per-parameter grammar honours.
_OBJECT_KEYWORDS = {"type", "properties", "required", "additionalProperties", "description",
                    "title", "$defs", "definitions", "$schema", "$id", "default", "examples"}


class Qwen3CoderFormat(ToolFormat):
    """`<tool_call><function=NAME><parameter=P>value</parameter></function></tool_call>`."""

    name = "qwen3_coder"
    call_marker = CALL_START
    token_texts = (CALL_START, CALL_END)

    def check_function(self, spec: FunctionSpec, where: str) -> None:
        schema = spec.parameters
        for key in schema:
            if key not in _OBJECT_KEYWORDS:
                raise ParamError(where, f"{key!r} cannot be enforced on parameters written "
                                        "as XML tags (qwen3_coder format)")
        extra = schema.get("additionalProperties")
        if extra not in (None, False, True):
            raise ParamError(f"{where}.additionalProperties", "only true or false can be "
                                                               "enforced (qwen3_coder format)")
        for name, prop in (schema.get("properties") or {}).items():
            if isinstance(prop, dict) and prop.get("type") == "string":
                for key in prop:
                    if key not in _STRING_KEYWORDS:
                        raise ParamError(f"{where}.properties.{name}.{key}",
                                         "cannot be enforced on a raw string value "
                                         "(qwen3_coder format)")

    def calls_rules(self, specs: list[FunctionSpec], max_calls: int) -> tuple[str, list[str]]:
        seq = self.markers.seq
        more = f' ("\\n" call){{0,{max_calls - 1}}}' if max_calls > 1 else ""
        rules = [f"call: {seq(CALL_START)} fn",
                 "fn: " + " | ".join(f"fn_{i}" for i in range(len(specs)))]
        for i, spec in enumerate(specs):
            rules += self._function_rules(i, spec)
        return f"fn{more}", rules

    def _function_rules(self, i: int, spec: FunctionSpec) -> list[str]:
        schema = rewrite_schema(spec.parameters)
        defs = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
        required = set(schema.get("required") or [])
        rules, parts = [], []
        for j, (name, prop) in enumerate((schema.get("properties") or {}).items()):
            rule = f"p_{i}_{j}"
            value = self._value_rules(rule, prop if isinstance(prop, dict) else {}, defs)
            rules.append(f"{rule}: {lit(f'<parameter={name}>' + NEWLINE)} {value[0]}")
            rules += value[1]
            parts.append(rule if name in required else f"{rule}?")
        head = lit(f"\n<function={spec.name}>\n")
        tail = f'{lit("</function>" + NEWLINE)} {self.markers.seq(CALL_END)}'
        return [" ".join([f"fn_{i}:", head, *parts, tail]), *rules]

    def _value_rules(self, rule: str, prop: dict[str, Any], defs: dict[str, Any]
                     ) -> tuple[str, list[str]]:
        """A value and its end tag: (expression, extra rules)."""
        end = lit(PARAM_END)
        kind = prop.get("type")
        if kind == "string":
            if "const" in prop or "enum" in prop:
                options = [prop["const"]] if "const" in prop else prop["enum"]
                texts = [lit(o) for o in options if isinstance(o, str)]
                if not texts:
                    raise ParamError("tools", f"{rule}: no string among the enum values")
                return f"({' | '.join(texts)}) {end}", []
            low, high = prop.get("minLength", 0), prop.get("maxLength")
            span = "*" if not low and high is None else f"{{{low},{'' if high is None else high}}}"
            # One lazy lexeme up to the first end tag: raw text may hold anything else.
            return (f'{rule}_text "\\n"',
                    [f"{rule}_text[lazy]: /(?s:.){span}\\n<\\/parameter>/"])
        if kind == "boolean":
            return f'("true" | "false" | "True" | "False") {end}', []
        if kind == "null":
            return f'("null" | "None") {end}', []
        value = copy.deepcopy(prop)
        value.update(defs)
        value["x-guidance"] = dict(JSON_LAYOUT)
        return f"{rule}_json {end}", [f"{rule}_json: {json_rule(value)}"]

    def call_parser(self, tools: list[dict[str, Any]] | None) -> XmlCallParser:
        return XmlCallParser(value_kinds(tools))
