"""What the tool-call parser reports: text deltas, call deltas, and finished calls."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any

_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """A fresh OpenAI-style tool-call id: "call_" and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def new_short_call_id() -> str:
    """A fresh call id of 9 letters and digits (the only ids Mistral's template accepts)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


@dataclass(frozen=True)
class ContentDelta:
    """A piece of text outside tool calls."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning (`reasoning_content`), never constrained."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of tool call `index`.

    The first delta of a call carries its `id` and whole `name` (and arguments ""); later
    deltas carry only a fragment of the arguments JSON text. Joining the fragments of one
    index gives the call's `arguments`.
    """

    index: int
    id: str | None
    name: str | None
    arguments: str

    @property
    def arguments_fragment(self) -> str:
        return self.arguments


@dataclass(frozen=True)
class ToolCall:
    """One finished call: `arguments` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        """The call as an item of OpenAI's `message.tool_calls`."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


Event = ContentDelta | ReasoningDelta | ToolCallDelta


def coalesce(events: list[Event]) -> list[Event]:
    """Merge runs of content deltas, of reasoning deltas, and of argument fragments of one
    call."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, (ContentDelta, ReasoningDelta)):
            if not event.text:
                continue
            if type(last) is type(event):
                merged[-1] = type(event)(last.text + event.text)  # type: ignore[union-attr]
                continue
        elif event.id is None and event.name is None:
            if not event.arguments:
                continue
            if isinstance(last, ToolCallDelta) and last.index == event.index:
                merged[-1] = ToolCallDelta(last.index, last.id, last.name,
                                           last.arguments + event.arguments)
                continue
        merged.append(event)
    return merged
