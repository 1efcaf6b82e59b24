"""Responses API input items -> chat messages (what the chat template renders).

Items are plain JSON objects, as clients send them and as the response store keeps them:
- messages `{"type": "message"?, "role", "content"}`, role user, system, developer or
  assistant, content a string or a list of `input_text` / `output_text` parts;
- `{"type": "function_call", "call_id", "name", "arguments"}`: one call by the assistant;
  calls that follow an assistant message (or each other) join that assistant turn;
- `{"type": "function_call_output", "call_id", "output"}`: a tool message;
- `{"type": "reasoning", "content": [{"type": "reasoning_text", "text"}], "summary"}`: the
  reasoning of the next assistant turn.
Every refusal is an `APIError` naming the item's field, e.g. `input.2.call_id`.
"""

from __future__ import annotations

from typing import Any

from .errors import APIError

MESSAGE_ROLES = ("user", "system", "developer", "assistant")
TEXT_PART_TYPES = ("input_text", "output_text", "text")


def normalize_input(value: str | list[Any]) -> list[dict[str, Any]]:
    """`input` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise APIError(f"input.{i}: must be an object", param=f"input.{i}")
    return list(value)


def items_to_messages(items: list[dict[str, Any]], where: str = "input"
                      ) -> list[dict[str, Any]]:
    """Chat messages (OpenAI chat format) for Responses input items."""
    messages: list[dict[str, Any]] = []
    reasoning: str | None = None
    joinable = False  # whether a function_call joins the last (assistant) message
    for i, item in enumerate(items):
        at = f"{where}.{i}"
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in MESSAGE_ROLES:
                raise APIError(f"{at}.role: must be one of {', '.join(MESSAGE_ROLES)} "
                               f"(got {role!r})", param=f"{at}.role")
            message: dict[str, Any] = {"role": role,
                                       "content": _text(item.get("content"), f"{at}.content")}
            if role == "assistant" and reasoning is not None:
                message["reasoning_content"], reasoning = reasoning, None
            messages.append(message)
            joinable = role == "assistant"
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", at), "type": "function",
                    "function": {"name": _string(item, "name", at),
                                 "arguments": _string(item, "arguments", at, empty=True)}}
            if joinable:
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                if reasoning is not None:
                    message["reasoning_content"], reasoning = reasoning, None
                messages.append(message)
                joinable = True
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", at),
                             "content": _text(output, f"{at}.output")})
            joinable = False
        elif kind == "reasoning":
            reasoning = reasoning_text(item) or None
        else:
            raise APIError(f"{at}.type: unsupported input item type {kind!r} (message, "
                           "function_call, function_call_output and reasoning are)",
                           param=f"{at}.type")
    return messages


def reasoning_text(item: dict[str, Any]) -> str:
    """The text of a reasoning item: its `reasoning_text` content, else its summary."""
    for key in ("content", "summary"):
        parts = item.get(key)
        if isinstance(parts, list):
            texts = [p.get("text") for p in parts if isinstance(p, dict)]
            text = "".join(t for t in texts if isinstance(t, str))
            if text:
                return text
    return ""


def _string(item: dict[str, Any], key: str, at: str, empty: bool = False) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (not value and not empty):
        raise APIError(f"{at}.{key}: must be a{'' if empty else ' non-empty'} string",
                       param=f"{at}.{key}")
    return value


def _text(content: Any, at: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(f"{at}: must be a string or a list of text parts", param=at)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PART_TYPES:
            raise APIError(f"{at}.{j}.type: only text parts (input_text, output_text) are "
                           f"supported (got {kind!r})", param=f"{at}.{j}.type")
        text = part.get("text")
        if not isinstance(text, str):
            raise APIError(f"{at}.{j}.text: must be a string", param=f"{at}.{j}.text")
        texts.append(text)
    return "".join(texts)
