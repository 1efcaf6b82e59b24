"""One completion's text -> reasoning, content and tool calls, incrementally.

`ChatOutputParser` chains three character-level stages, each of which decides from the
text alone (never from how it was cut into deltas):
1. end-of-turn texts a format keeps in the output (special tokens decoded) are dropped;
2. a `ThinkSplitter` (when the model may reason) takes the reasoning off the front;
3. the format's call parser reads the rest into content and tool calls (or, without one,
   the rest is content as is).
So the streamed events, joined, always equal the final `reasoning`, `content` and
`tool_calls`.
"""

from __future__ import annotations

from typing import Any, Protocol

from corral.grammars.param_error import ParamError
from corral.tools.events import ContentDelta, Event, ReasoningDelta, ToolCall, coalesce
from corral.tools.reasoning import ThinkSplitter


class OutputParser(Protocol):
    """What the API reads a completion with (see `ChatOutputParser`)."""

    def feed(self, text: str) -> list[Event]: ...

    def finish(self, truncated: bool = False) -> list[Event]: ...

    @property
    def reasoning(self) -> str | None: ...

    @property
    def content(self) -> str | None: ...

    @property
    def tool_calls(self) -> list[ToolCall]: ...


class TextDropper:
    """Removes every occurrence of some texts, holding back what may be the start of one."""

    def __init__(self, texts: tuple[str, ...]) -> None:
        self.texts = tuple(t for t in texts if t)
        self._hold = ""

    def feed(self, text: str) -> str:
        if not self.texts:
            return text
        out = []
        for c in text:
            self._hold += c
            for t in self.texts:
                if self._hold.endswith(t):
                    self._hold = self._hold[:-len(t)]
            keep = self._held_from()
            out.append(self._hold[:keep])
            self._hold = self._hold[keep:]
        return "".join(out)

    def finish(self) -> str:
        held, self._hold = self._hold, ""
        return held

    def _held_from(self) -> int:
        for i in range(len(self._hold)):
            if any(t.startswith(self._hold[i:]) for t in self.texts):
                return i
        return len(self._hold)


class ChatOutputParser:
    """Streaming and final parser of one completion (see the module docstring)."""

    def __init__(self, call_parser: Any | None, splitter: ThinkSplitter | None,
                 drop_texts: tuple[str, ...] = ()) -> None:
        self._calls = call_parser
        self._splitter = splitter
        self._dropper = TextDropper(drop_texts)
        self._reasoning_parts: list[str] = []
        self._content_parts: list[str] = []
        self._is_finished = False

    def feed(self, text: str) -> list[Event]:
        """Read the next piece of text; return the events it completes."""
        if self._is_finished:
            raise ParamError("text", "the parser was already finished")
        return self._route(self._dropper.feed(text), final=False)

    def finish(self, truncated: bool = False) -> list[Event]:
        """Flush at the end of the text (`truncated`: cut by a token limit)."""
        if self._is_finished:
            return []
        events = self._route(self._dropper.finish(), final=True)
        if self._calls is not None:
            events += self._calls.finish(truncated)
        self._is_finished = True
        return coalesce(events)

    def _route(self, text: str, final: bool) -> list[Event]:
        pieces = self._splitter.feed(text) if self._splitter is not None else [(False, text)]
        if final and self._splitter is not None:
            pieces += self._splitter.finish()
        events: list[Event] = []
        for is_reasoning, piece in pieces:
            if not piece:
                continue
            if is_reasoning:
                self._reasoning_parts.append(piece)
                events.append(ReasoningDelta(piece))
            elif self._calls is not None:
                events += self._calls.feed(piece)
            else:
                self._content_parts.append(piece)
                events.append(ContentDelta(piece))
        return coalesce(events)

    @property
    def reasoning(self) -> str | None:
        """The reasoning text, or None when there is none."""
        return "".join(self._reasoning_parts) or None

    @property
    def content(self) -> str | None:
        """Text outside reasoning and calls, or None when there is none."""
        if self._calls is not None:
            return self._calls.content
        return "".join(self._content_parts) or None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self._calls.tool_calls if self._calls is not None else []
