"""Harmony output -> reasoning, content and tool calls, one character at a time.

The output (special tokens decoded) is a run of messages after the prompt's
`<|start|>assistant`:

    <|channel|>analysis<|message|>...<|end|>
    <|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>{...}<|call|>
    <|start|>assistant<|channel|>final<|message|>...<|return|>

A message's header (up to `<|message|>`) says where its body goes: the analysis channel is
reasoning, a recipient `to=functions.NAME` makes a tool call whose body is the arguments,
anything else (final, a commentary preamble) is content. Bodies stream as they come; text
that may begin an end marker is held until it cannot. `<|return|>` ends the output.
"""

from __future__ import annotations

import re

from corral.grammars.param_error import ParamError
from corral.tools.events import (
    ContentDelta,
    Event,
    ReasoningDelta,
    ToolCall,
    ToolCallDelta,
    coalesce,
    new_call_id,
)

MESSAGE = "<|message|>"
END, CALL, RETURN = "<|end|>", "<|call|>", "<|return|>"
_BODY_ENDS = (END, CALL, RETURN)
_CHANNEL_RE = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_RECIPIENT_RE = re.compile(r"\bto=([^\s<]+)")


class HarmonyParser:
    """Streaming and final parser of one harmony completion (see the module docstring)."""

    def __init__(self, parse_calls: bool = True) -> None:
        self.parse_calls = parse_calls
        self._pending: list[Event] = []
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._calls: list[dict[str, str]] = []
        self._state = "header"  # header|body|done
        self._header = ""
        self._route = "content"  # reasoning|content|call
        self._hold = ""  # body text that may begin an end marker
        self._is_finished = False

    def feed(self, text: str) -> list[Event]:
        if self._is_finished:
            raise ParamError("text", "the parser was already finished")
        for c in text:
            self._step(c)
        return self._drain()

    def finish(self, truncated: bool = False) -> list[Event]:
        """Settle the open message: a body keeps its text (a call cut short keeps the
        arguments read so far; one ended without them gets "{}"); a header without any
        marker was plain text."""
        if self._is_finished:
            return []
        if self._state == "body":
            held, self._hold = self._hold, ""
            self._emit_body(held)
            self._end_body(truncated)
        elif self._state == "header" and "<|" not in self._header:
            self._emit(ContentDelta(self._header))
        self._is_finished = True
        return self._drain()

    @property
    def reasoning(self) -> str | None:
        return "".join(self._reasoning) or None

    @property
    def content(self) -> str | None:
        return "".join(self._content) or None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(c["id"], c["name"], c["arguments"]) for c in self._calls]

    # -- internals -------------------------------------------------------------------------

    def _drain(self) -> list[Event]:
        events, self._pending = coalesce(self._pending), []
        return events

    def _emit(self, event: Event) -> None:
        if isinstance(event, (ContentDelta, ReasoningDelta)) and not event.text:
            return
        self._pending.append(event)
        if isinstance(event, ContentDelta):
            self._content.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self._reasoning.append(event.text)
        else:
            if event.id is not None:
                self._calls.append({"id": event.id, "name": event.name or "", "arguments": ""})
            self._calls[event.index]["arguments"] += event.arguments

    def _emit_body(self, text: str) -> None:
        if not text:
            return
        if self._route == "reasoning":
            self._emit(ReasoningDelta(text))
        elif self._route == "call":
            self._emit(ToolCallDelta(len(self._calls) - 1, None, None, text))
        else:
            self._emit(ContentDelta(text))

    def _step(self, c: str) -> None:
        if self._state == "header":
            self._header += c
            if self._header.endswith(MESSAGE):
                self._start_body(self._header[:-len(MESSAGE)])
                self._header = ""
            elif self._header.endswith(RETURN):
                self._state = "done"
            elif self._header.endswith(END) or self._header.endswith(CALL):
                self._header = ""
        elif self._state == "body":
            self._hold += c
            for end in _BODY_ENDS:
                if self._hold.endswith(end):
                    self._emit_body(self._hold[:-len(end)])
                    self._hold = ""
                    self._end_body(False)
                    self._state = "done" if end == RETURN else "header"
                    return
            keep = _held_from(self._hold)
            self._emit_body(self._hold[:keep])
            self._hold = self._hold[keep:]

    def _start_body(self, header: str) -> None:
        self._state = "body"
        channel = _CHANNEL_RE.search(header)
        recipient = _RECIPIENT_RE.search(header)
        if recipient and self.parse_calls:
            name = recipient.group(1).removeprefix("functions.")
            self._route = "call"
            self._emit(ToolCallDelta(len(self._calls), new_call_id(), name, ""))
        elif channel and channel.group(1) == "analysis":
            self._route = "reasoning"
        else:
            self._route = "content"

    def _end_body(self, truncated: bool) -> None:
        if self._route == "call" and not self._calls[-1]["arguments"] and not truncated:
            self._emit(ToolCallDelta(len(self._calls) - 1, None, None, "{}"))
        self._route = "content"


def _held_from(text: str) -> int:
    """Where the end of `text` that may begin an end marker starts."""
    start = text.rfind("<")
    if start != -1 and any(end.startswith(text[start:]) for end in _BODY_ENDS):
        return start
    return len(text)
