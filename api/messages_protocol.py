"""`POST /v1/messages` (Anthropic Messages API): the request, and its translation into a
chat completion request.

Content blocks become chat messages: `text` blocks join into a message's text, an
assistant's `tool_use` blocks become its `tool_calls` (`input` as the JSON arguments), a
user's `tool_result` blocks become tool messages (before the user's own text), `thinking`
blocks the assistant turn's reasoning. `MESSAGES_RENAMES` names a refused chat field in
this API's terms.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from .errors import APIError
from .protocol import OpenAIModel
from .turn import Renames

_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,128}$"

MESSAGES_RENAMES: Renames = (
    (r"^messages.*", "messages"),
    (r"^tools\[(\d+)\]\.function\.parameters", r"tools.\1.input_schema"),
    (r"^tools\.(\d+)\.function\.parameters", r"tools.\1.input_schema"),
    (r"^tools\[(\d+)\]\.function\.", r"tools.\1."),
    (r"^tools\.(\d+)\.function\.", r"tools.\1."),
    (r"^tool_choice.*", "tool_choice"),
    (r"^max_completion_tokens$", "max_tokens"),
    (r"^stop$", "stop_sequences"),
)


class AnthropicMessage(OpenAIModel):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class AnthropicTool(OpenAIModel):
    type: str | None = None
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class AnthropicToolChoice(OpenAIModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MessagesInput(OpenAIModel):
    """What a prompt is made of (the body of `count_tokens`)."""

    model: str
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None

    def check(self) -> None:
        """Refuse what Corral cannot do, naming the field."""
        for i, tool in enumerate(self.tools or []):
            if tool.type not in (None, "custom"):
                raise APIError(f"tools.{i}.type: only custom (client) tools are supported "
                               f"(got {tool.type!r})", param=f"tools.{i}.type")
            if tool.input_schema is None:
                raise APIError(f"tools.{i}.input_schema: Field required",
                               param=f"tools.{i}.input_schema")
        choice = self.tool_choice
        if choice is not None and choice.type == "tool":
            names = [t.name for t in self.tools or []]
            if choice.name not in names:
                raise APIError(f"tool_choice.name: {choice.name!r} is not among the tools "
                               f"{names}", param="tool_choice.name")
        if choice is not None and choice.type in ("any", "tool") and not self.tools:
            raise APIError(f"tool_choice: '{choice.type}' needs tools", param="tool_choice")
        if self.messages[-1].role == "assistant":
            raise APIError("messages: a final assistant message (prefill) is not supported",
                           param="messages")

    def chat_body(self) -> dict[str, Any]:
        """The chat completion request (as JSON) for this prompt."""
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": _text(self.system, "system")})
        for i, message in enumerate(self.messages):
            messages += _chat_messages(message, f"messages.{i}")
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.tools:
            body["tools"] = [{"type": "function", "function": _function(t)} for t in self.tools]
        choice = self.tool_choice
        if choice is not None:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(
                choice.type) or {"type": "function", "function": {"name": choice.name}}
            if choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
        return body


class MessagesRequest(MessagesInput):
    max_tokens: int = Field(ge=1)
    metadata: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, ge=0, le=1)

    def chat_body(self) -> dict[str, Any]:
        body = super().chat_body()
        sampling = {"max_completion_tokens": self.max_tokens, "stop": self.stop_sequences,
                    "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                    "stream": self.stream}
        return {**body, **{k: v for k, v in sampling.items() if v is not None}}


def _function(tool: AnthropicTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description is not None:
        function["description"] = tool.description
    return function


def _chat_messages(message: AnthropicMessage, at: str) -> list[dict[str, Any]]:
    """The chat messages of one Anthropic message (tool results first)."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for j, block in enumerate(message.content):
        where = f"{at}.content.{j}"
        kind = block.get("type")
        allowed = ("text", "tool_use", "thinking", "redacted_thinking") \
            if message.role == "assistant" else ("text", "tool_result")
        if kind not in allowed:
            raise APIError(f"{where}.type: {kind!r} blocks are not supported in a "
                           f"{message.role} message ({', '.join(allowed)} are)",
                           param=f"{where}.type")
        if kind == "text":
            texts.append(_string(block, "text", where))
        elif kind == "tool_use":
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise APIError(f"{where}.input: must be an object", param=f"{where}.input")
            calls.append({"id": _string(block, "id", where), "type": "function",
                          "function": {"name": _string(block, "name", where),
                                       "arguments": json.dumps(arguments, ensure_ascii=False)}})
        elif kind == "tool_result":
            content = _text(block.get("content", ""), f"{where}.content")
            if block.get("is_error"):
                content = f"Error: {content}"
            results.append({"role": "tool", "tool_call_id": _string(block, "tool_use_id", where),
                            "content": content})
        elif kind == "thinking":
            reasoning.append(_string(block, "thinking", where))
    if message.role == "user":
        return [*results, *([{"role": "user", "content": "\n".join(texts)}] if texts else [])]
    out: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) or None}
    if calls:
        out["tool_calls"] = calls
    elif out["content"] is None:
        out["content"] = ""
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    return [out]


def _string(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise APIError(f"{where}.{key}: must be a string", param=f"{where}.{key}")
    return value


def _text(content: Any, where: str) -> str:
    """A string, or the text of a list of `text` blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(f"{where}: must be a string or a list of text blocks", param=where)
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise APIError(f"{where}.{j}.type: only text blocks are supported (got {kind!r})",
                           param=f"{where}.{j}.type")
        texts.append(_string(block, "text", f"{where}.{j}"))
    return "\n".join(texts)
