"""Conversations in OpenAI's harmony format (gpt-oss), written as the model was trained.

The Hugging Face template of gpt-oss differs from harmony where it matters for tool calls
(history calls lack `<|constrain|>`, tool results are quoted as JSON strings), so Corral
writes harmony itself:

    <|start|>system<|message|>{identity, dates, reasoning effort, channels}<|end|>
    <|start|>developer<|message|># Instructions ... # Tools ... namespace functions {...}<|end|>
    <|start|>user<|message|>...<|end|>
    <|start|>assistant<|channel|>analysis<|message|>{reasoning}<|end|>
    <|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>{a}<|call|>
    <|start|>functions.f to=assistant<|channel|>commentary<|message|>{result}<|end|>
    <|start|>assistant

Functions are declared as TypeScript-like types. The reasoning of a turn is kept only while
its tool loop is still open (no final answer after it), as harmony prescribes.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from corral.grammars.param_error import ParamError
from corral.tools.functions import FunctionSpec

DEFAULT_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
REASONING_EFFORTS = ("low", "medium", "high")
# chat_template_kwargs the harmony writer reads.
HARMONY_KWARGS = ("reasoning_effort", "model_identity", "conversation_start_date")


def render_harmony(chat: list[dict[str, Any]], specs: list[FunctionSpec],
                   add_generation_prompt: bool = True,
                   options: dict[str, Any] | None = None) -> str:
    """The harmony prompt for validated messages and callable `specs`; `options` may set
    `reasoning_effort` (low, medium, high), `model_identity` and `conversation_start_date`
    (YYYY-MM-DD, default today)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(HARMONY_KWARGS) - {"enable_thinking"})
    if unknown:
        raise ParamError(f"chat_template_kwargs.{unknown[0]}", "not an option of the harmony "
                         f"format (it takes {', '.join(HARMONY_KWARGS)})")
    effort = options.get("reasoning_effort") or "medium"
    if effort not in REASONING_EFFORTS:
        raise ParamError("reasoning_effort", f"must be one of {', '.join(REASONING_EFFORTS)}")
    date = options.get("conversation_start_date") or datetime.date.today().isoformat()
    parts = [_system(options.get("model_identity") or DEFAULT_IDENTITY, str(date), effort,
                     bool(specs))]
    messages = list(chat)
    instructions = messages.pop(0)["content"] if messages and \
        messages[0]["role"] == "system" else ""
    if instructions or specs:
        parts.append(_message("developer", _developer(instructions, specs)))
    last_final = max((i for i, m in enumerate(messages)
                      if m["role"] == "assistant" and not m.get("tool_calls")), default=-1)
    last_call_name = ""
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "user":
            parts.append(_message("user", m["content"]))
        elif role == "system":
            parts.append(_message("developer", m["content"]))
        elif role == "tool":
            name = m.get("name") or last_call_name
            parts.append(f"<|start|>functions.{name} to=assistant<|channel|>commentary"
                         f"<|message|>{m['content']}<|end|>")
        else:
            reasoning = m.get("reasoning_content")
            if reasoning and i > last_final:
                parts.append(f"<|start|>assistant<|channel|>analysis<|message|>{reasoning}<|end|>")
            calls = m.get("tool_calls") or []
            if not calls:
                parts.append(f"<|start|>assistant<|channel|>final<|message|>{m['content']}<|end|>")
                continue
            if m["content"]:
                parts.append(f"<|start|>assistant<|channel|>commentary<|message|>{m['content']}"
                             "<|end|>")
            for call in calls:
                parts.append(f"<|start|>assistant to=functions.{call['name']}<|channel|>"
                             f"commentary <|constrain|>json<|message|>{call['arguments']}"
                             "<|call|>")
                last_call_name = call["name"]
    if add_generation_prompt:
        parts.append("<|start|>assistant")
    return "".join(parts)


def _message(role: str, content: str) -> str:
    return f"<|start|>{role}<|message|>{content}<|end|>"


def _system(identity: str, date: str, effort: str, has_functions: bool) -> str:
    text = (f"{identity}\nKnowledge cutoff: {KNOWLEDGE_CUTOFF}\nCurrent date: {date}\n\n"
            f"Reasoning: {effort}\n\n# Valid channels: analysis, commentary, final. Channel "
            "must be included for every message.")
    if has_functions:
        text += "\nCalls to these tools must go to the commentary channel: 'functions'."
    return _message("system", text)


def _developer(instructions: str, specs: list[FunctionSpec]) -> str:
    sections = []
    if instructions:
        sections.append(f"# Instructions\n\n{instructions}")
    if specs:
        body = "".join(_function(s) for s in specs)
        sections.append(f"# Tools\n\n## functions\n\nnamespace functions {{\n\n{body}"
                        "} // namespace functions")
    return "\n\n".join(sections)


def _function(spec: FunctionSpec) -> str:
    head = f"// {spec.description}\n" if spec.description else ""
    props = spec.parameters.get("properties") or {}
    if not props:
        return f"{head}type {spec.name} = () => any;\n\n"
    required = set(spec.parameters.get("required") or [])
    fields = "".join(_field(name, p, name in required) for name, p in props.items())
    return f"{head}type {spec.name} = (_: {{\n{fields}}}) => any;\n\n"


def _field(name: str, schema: Any, is_required: bool) -> str:
    schema = schema if isinstance(schema, dict) else {}
    line = f"// {schema['description']}\n" if schema.get("description") else ""
    line += f"{name}{'' if is_required else '?'}: {ts_type(schema)}"
    if "default" in schema:
        return f"{line}, // default: {json.dumps(schema['default'])}\n"
    return f"{line},\n"


def ts_type(schema: Any) -> str:
    """A JSON schema as a TypeScript-like type, as harmony declares function arguments."""
    if not isinstance(schema, dict):
        return "any"
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return " | ".join(ts_type(s) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(ts_type({**schema, "type": k}) for k in kind)
    if kind in ("number", "integer"):
        return "number"
    if kind in ("string", "boolean", "null"):
        return str(kind)
    if kind == "array":
        items = schema.get("items")
        inner = ts_type(items) if isinstance(items, dict) else "any"
        return f"({inner})[]" if " | " in inner else f"{inner}[]"
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return "object"
        required = set(schema.get("required") or [])
        fields = "".join(_field(n, p, n in required) for n, p in props.items())
        return f"{{\n{fields}}}"
    return "any"
