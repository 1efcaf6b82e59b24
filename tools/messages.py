"""OpenAI chat messages, validated into plain dicts a chat template can render."""

from __future__ import annotations

import json
from typing import Any

from corral.grammars.param_error import ParamError

ROLES = ("system", "developer", "user", "assistant", "tool")


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate OpenAI `messages` into dicts with string content (ValueError naming the field).

    Each result has `role` (developer becomes system) and `content` (str); an assistant
    message may keep `tool_calls` as [{"id", "name", "arguments": JSON text}] and its
    `reasoning_content` (the reasoning of that turn, for templates that show it), a tool
    message keeps `tool_call_id` and gets the called function's `name` when the history
    shows it.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ParamError("messages", "must be a non-empty list of messages")
    names_by_id: dict[str, str] = {}
    result = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ParamError(where, "must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise ParamError(f"{where}.role", f"must be one of {', '.join(ROLES)} (got {role!r})")
        out: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _content_text(message.get("content"), f"{where}.content"),
        }
        if role == "assistant" and isinstance(message.get("reasoning_content"), str):
            out["reasoning_content"] = message["reasoning_content"]
        if role == "assistant" and message.get("tool_calls"):
            out["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
            names_by_id.update({c["id"]: c["name"] for c in out["tool_calls"]})
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise ParamError(f"{where}.tool_call_id", "a tool message needs the call's id")
            out["tool_call_id"] = call_id
            if call_id in names_by_id:
                out["name"] = names_by_id[call_id]
        if isinstance(message.get("name"), str) and role != "tool":
            out["name"] = message["name"]
        result.append(out)
    return result


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ParamError(where, "must be a string, a list of text parts, or null")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ParamError(f"{where}[{j}].type", f"only text parts are supported (got {kind!r})")
        text = part.get("text")
        if not isinstance(text, str):
            raise ParamError(f"{where}[{j}].text", "must be a string")
        texts.append(text)
    return "".join(texts)


def _tool_calls(tool_calls: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(tool_calls, list):
        raise ParamError(where, "must be a list of tool calls")
    calls = []
    for j, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise ParamError(f"{where}[{j}].function", "must be an object with name and arguments")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ParamError(f"{where}[{j}].function.name", "must be a non-empty string")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments, ensure_ascii=False)
        if not isinstance(arguments, str):
            raise ParamError(f"{where}[{j}].function.arguments", "must be a JSON string")
        call_id = call.get("id")
        calls.append({"id": call_id if isinstance(call_id, str) else f"call_{j}",
                      "name": name, "arguments": arguments})
    return calls
