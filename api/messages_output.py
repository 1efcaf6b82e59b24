"""A turn's events -> an Anthropic message and its stream events.

`MessageBuilder` opens a content block when the kind of event changes (reasoning ->
`thinking`, content -> `text`, a new tool call -> `tool_use`) and closes it when the next
one opens or the turn ends; the non-streamed message and the stream come from the same
builder, so the stream's deltas always join to the message.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from corral.tools.events import ContentDelta, ReasoningDelta

from .errors import APIError
from .sse import sse_event
from .turn import TurnEnd, TurnEvent

_DELTAS = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking"),
           "tool_use": ("input_json_delta", "partial_json")}


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def tool_use_id(call_id: str) -> str:
    """The `tool_use` id for a parser's call id (`call_x` -> `toolu_x`)."""
    return "toolu_" + call_id.removeprefix("call_")


def stop_reason(end: TurnEnd) -> str:
    """Anthropic's `stop_reason` for how a turn ended."""
    if end.finish_reason == "length":
        return "max_tokens"
    if end.finish_reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if end.stop_sequence is not None else "end_turn"


class MessageBuilder:
    """Builds one message from a turn's events (see the module docstring)."""

    def __init__(self, message_id: str, model: str, num_prompt_tokens: int) -> None:
        self.id = message_id
        self.model = model
        self.content: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage = {"input_tokens": num_prompt_tokens, "output_tokens": 0}
        self._open: str | None = None  # type of the open (last) block
        self._text = ""

    def message(self) -> dict[str, Any]:
        """The message as it stands."""
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [dict(block) for block in self.content],
                "stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence,
                "usage": dict(self.usage)}

    def start(self) -> list[dict[str, Any]]:
        """`message_start` and a `ping`."""
        return [{"type": "message_start", "message": self.message()}, {"type": "ping"}]

    def feed(self, event: TurnEvent) -> list[dict[str, Any]]:
        """The stream events for one turn event."""
        if isinstance(event, TurnEnd):
            return self.finish(event)
        if isinstance(event, ReasoningDelta):
            return self._delta("thinking", event.text)
        if isinstance(event, ContentDelta):
            return self._delta("text", event.text)
        events = []
        if event.id is not None:
            events += self._close()
            events += self._add({"type": "tool_use", "id": tool_use_id(event.id),
                                 "name": event.name, "input": {}})
        if event.arguments:
            events += self._delta("tool_use", event.arguments)
        return events

    def finish(self, end: TurnEnd) -> list[dict[str, Any]]:
        """Close the open block; `message_delta` and `message_stop`."""
        events = self._close()
        self.stop_reason = stop_reason(end)
        self.stop_sequence = end.stop_sequence if self.stop_reason == "stop_sequence" else None
        self.usage["output_tokens"] = end.num_output_tokens
        return [*events,
                {"type": "message_delta",
                 "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                 "usage": {"output_tokens": end.num_output_tokens}},
                {"type": "message_stop"}]

    @staticmethod
    def error_event(err: APIError) -> bytes:
        """An error after the stream began, as the stream's `error` event."""
        return sse_event(err.to_anthropic_dict(), "error")

    def _add(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        self.content.append(block)
        self._open, self._text = block["type"], ""
        return [{"type": "content_block_start", "index": len(self.content) - 1,
                 "content_block": dict(block)}]

    def _delta(self, kind: str, text: str) -> list[dict[str, Any]]:
        events = []
        if self._open != kind:
            events += self._close()
            block = {"type": kind, kind: ""}
            if kind == "thinking":
                block["signature"] = ""
            events += self._add(block)
        self._text += text
        delta_type, key = _DELTAS[kind]
        return [*events, {"type": "content_block_delta", "index": len(self.content) - 1,
                          "delta": {"type": delta_type, key: text}}]

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        block = self.content[-1]
        if self._open == "tool_use":
            block["input"] = _arguments(self._text)
        else:
            block[self._open] = self._text
        self._open, self._text = None, ""
        return [{"type": "content_block_stop", "index": len(self.content) - 1}]


def _arguments(text: str) -> dict[str, Any]:
    """A call's arguments as an object ({} for none, or for arguments cut short)."""
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
