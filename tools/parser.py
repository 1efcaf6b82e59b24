"""Model text -> content and tool calls, incrementally.

One `ToolCallParser` per completion. It reads the text one character at a time, so what it
reports depends only on the text, never on how the text was cut into deltas: the streamed
events, joined, always equal the final `content` and `tool_calls` (which are built from the
very same events).

The markers come from a `CallSyntax`: Hermes/Qwen blocks (`<tool_call>...</tool_call>`, the
default, see `call_format`), Mistral's `[TOOL_CALLS] [...]` (no end marker), or Llama 3.1's
bare call object at the start of the output (no marker at all).

Rules (shown for the default markers):
- Text outside calls is content. Text that may still turn into the call marker is held back
  until it cannot; whitespace next to a call (before it, between calls, after the last) is
  dropped, and trailing whitespace is dropped once any call was made.
- A call becomes a call (first delta: index, id, name) once `<tool_call>`, `{` and a string
  "name" value have been read. Its "arguments" (or "parameters") value is streamed as raw
  JSON text as it arrives; a call without arguments gets "{}".
- A block may also hold a JSON list of call objects (the form SmolLM2 was trained on):
  `<tool_call>[{...}, {...}]</tool_call>` is two calls, `<tool_call>[]</tool_call>` none.
- A block that breaks the format before its first name is known is given back as content.
  After that, anything malformed up to `</tool_call>` is skipped.
- `</tool_call>` ends a call; a new `<tool_call>` or the end of the text also does, and any
  other text after the call's object ends it and goes back to content.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.grammars.param_error import ParamError
from corral.tools.call_format import CALL_END, CALL_START
from corral.tools.events import (
    ContentDelta,
    Event,
    ToolCall,
    ToolCallDelta,
    coalesce,
    new_call_id,
)
from corral.tools.functions import parse_tools
from corral.tools.json_scan import JsonValueScanner, Scan

_ARGUMENT_KEYS = ("arguments", "parameters")


@dataclass(frozen=True)
class CallSyntax:
    """Where JSON call objects sit in a model's output.

    `start`: the marker that opens a block of calls, or None when a block is a JSON object
    (or list) at the very start of the output; `end`: the marker that closes a block, or
    None when a block ends with its JSON value; `new_id`: the id given to each call.
    """

    start: str | None = CALL_START
    end: str | None = CALL_END
    new_id: Callable[[], str] = new_call_id


HERMES_SYNTAX = CallSyntax()


class ToolCallParser:
    """Streaming and final parser of one completion's text (see the module docstring)."""

    def __init__(self, tools: list[dict[str, Any]] | None = None,
                 syntax: CallSyntax = HERMES_SYNTAX) -> None:
        self.function_names = [spec.name for spec in parse_tools(tools, check_schemas=False)]
        self._syntax = syntax
        self._start = syntax.start or ""
        self._end = syntax.end or ""
        self._is_at_start = True  # no content yet (a marker-less block may open here)
        self._pending: list[Event] = []  # emitted since the last feed() returned
        self._is_finished = False
        self._content_parts: list[str] = []
        self._calls: list[dict[str, str]] = []  # id, name, arguments per index
        # Text mode.
        self._in_call = False
        self._ws_hold = ""  # whitespace not yet known to be content
        self._marker_hold = ""  # a prefix of CALL_START not yet known to be content
        self._is_after_call = False  # no content since the last call ended
        # Call mode.
        self._reset_call("")

    # -- public interface ------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        """Read the next piece of text; return the events it completes."""
        if self._is_finished:
            raise ParamError("text", "the parser was already finished")
        for c in text:
            self._step(c)
        return self._drain()

    def finish(self, truncated: bool = False) -> list[Event]:
        """Flush at the end of the text: held text and an open call are settled.

        `truncated`: the text was cut by a token limit. A call block still open is then
        not a call: one whose name was not read yet is dropped (never given back as
        content), and one whose arguments were cut keeps the arguments read so far
        (no "{}" stands in for them).
        """
        if self._is_finished:
            return []
        if truncated:
            self._marker_hold = ""  # the start of a call marker, cut
        if truncated and self._in_call:
            if self._call_index is None and self._num_block_calls == 0:
                self._in_call = False
                self._reset_call("")
            else:
                self._args_state = "done"
        while self._in_call and self._num_block_calls == 0 and self._state != "post":
            self._release()
        if self._in_call:
            self._close_call()
        if self._marker_hold:
            held, self._marker_hold = self._marker_hold, ""
            self._emit_text(held)
        if self._ws_hold and not self._calls:
            self._emit_content(self._ws_hold)
        self._ws_hold = ""
        self._is_finished = True
        return self._drain()

    @property
    def content(self) -> str | None:
        """Text outside calls, or None when there is none."""
        text = "".join(self._content_parts)
        return text or None

    @property
    def reasoning(self) -> str | None:
        """Always None: this parser reads no reasoning (see `reasoning`)."""
        return None

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls read so far (a call still open shows its arguments so far)."""
        return [ToolCall(c["id"], c["name"], c["arguments"]) for c in self._calls]

    # -- emitting ----------------------------------------------------------------------------

    def _drain(self) -> list[Event]:
        events, self._pending = coalesce(self._pending), []
        return events

    def _emit(self, event: Event) -> None:
        self._pending.append(event)
        if isinstance(event, ContentDelta):
            self._content_parts.append(event.text)
            return
        if event.id is not None:
            self._calls.append({"id": event.id, "name": event.name or "", "arguments": ""})
        self._calls[event.index]["arguments"] += event.arguments

    def _emit_content(self, text: str) -> None:
        if text:
            self._emit(ContentDelta(text))

    def _emit_text(self, text: str) -> None:
        """Emit content that starts with a non-whitespace character."""
        self._is_at_start = False
        if self._ws_hold and not self._is_after_call:
            self._emit_content(self._ws_hold)
        self._ws_hold = ""
        self._is_after_call = False
        self._emit_content(text)

    def _emit_arguments(self, fragment: str) -> None:
        if fragment:
            self._emit(ToolCallDelta(self._call_index, None, None, fragment))

    # -- text mode -------------------------------------------------------------------------

    def _feed_text(self, text: str) -> None:
        for c in text:
            self._step(c)

    def _step(self, c: str) -> None:
        if self._in_call:
            self._step_call(c)
        elif not self._start:
            if self._is_at_start and not self._calls and c in "{[":
                self._open_call()
                self._step_call(c)
            elif c.isspace():
                self._ws_hold += c
            else:
                self._emit_text(c)
        elif self._marker_hold or c == self._start[0]:
            self._marker_hold += c
            if self._marker_hold == self._start:
                self._marker_hold = ""
                self._open_call()
            elif not self._start.startswith(self._marker_hold):
                held, self._marker_hold = self._marker_hold, ""
                self._emit_text(held[0])
                self._feed_text(held[1:])
        elif c.isspace():
            self._ws_hold += c
        else:
            self._emit_text(c)

    # -- call mode -------------------------------------------------------------------------

    def _reset_call(self, dropped_ws: str) -> None:
        # pre|item|key|key_str|colon|value|after_value|after_item|post|skip
        self._state = "pre"
        self._raw = ""  # text read since the marker, kept until the block's first call
        self._dropped_ws = dropped_ws
        self._is_list = False  # the block holds a JSON list of calls
        self._num_block_calls = 0
        self._reset_object()
        self._post_buf = ""

    def _reset_object(self) -> None:
        self._call_index: int | None = None
        self._args_buf: str | None = None  # arguments read before the name
        self._args_state = "none"  # none|open|done
        self._key: str | None = None
        self._scanner = JsonValueScanner()  # the key or value being read

    def _open_call(self) -> None:
        dropped, self._ws_hold = self._ws_hold, ""
        self._in_call = True
        self._reset_call(dropped)

    def _release(self) -> None:
        """Give a block that broke the format before its name back as content."""
        rest = self._raw
        self._in_call = False
        self._ws_hold = self._dropped_ws
        if self._start:
            self._emit_text(self._start)
        else:
            self._emit_text(rest[:1])
            rest = rest[1:]
        self._feed_text(rest)

    def _end_call(self) -> None:
        if self._call_index is not None and self._args_state == "none":
            self._emit_arguments("{}")
        self._reset_object()

    def _close_call(self) -> None:
        self._end_call()
        self._in_call = False
        self._is_after_call = True
        self._reset_call("")

    def _commit(self, name: str) -> None:
        self._call_index = len(self._calls)
        self._num_block_calls += 1
        self._emit(ToolCallDelta(self._call_index, self._syntax.new_id(), name, ""))
        if self._args_buf is not None:
            self._emit_arguments(self._args_buf)
            self._args_state = "done"

    def _step_call(self, c: str) -> None:
        if self._num_block_calls == 0:
            self._raw += c
        state = self._state
        if state == "value":
            self._step_value(c)
        elif state == "key_str":
            if self._scanner.push(c) is Scan.DONE:
                try:
                    self._key = json.loads(self._scanner.text)
                except json.JSONDecodeError:
                    self._fail()
                    return
                self._state = "colon"
        elif state == "post":
            self._step_post(c)
        elif state == "skip":
            if self._end:
                self._post_buf = (self._post_buf + c)[-len(self._end):]
                if self._post_buf.endswith(self._end):
                    self._close_call()
        elif c.isspace():
            return
        elif state in ("pre", "item"):
            if c == "{":
                self._state = "key"
            elif c == "[" and state == "pre":
                self._state, self._is_list = "item", True
            elif c == "]" and state == "item" and self._num_block_calls == 0:
                self._state, self._post_buf = "post", ""
            else:
                self._fail()
        elif state == "after_item":
            if c == ",":
                self._state = "item"
            elif c == "]":
                self._state, self._post_buf = "post", ""
            else:
                self._fail()
        elif state == "key":
            if c == '"':
                self._state, self._scanner = "key_str", JsonValueScanner()
                self._scanner.push(c)
            elif c == "}":
                self._end_object()
            else:
                self._fail()
        elif state == "colon":
            if c == ":":
                self._start_value()
            else:
                self._fail()
        elif state == "after_value":
            if c == ",":
                self._state = "key"
            elif c == "}":
                self._end_object()
            else:
                self._fail()

    def _fail(self) -> None:
        """The block broke the format; callers return right after (state may be new)."""
        if self._call_index is None and self._num_block_calls == 0:
            self._release()
        else:
            self._state, self._post_buf = "skip", ""

    def _end_object(self) -> None:
        if self._call_index is None:
            self._fail()
        elif self._is_list:
            self._end_call()
            self._state = "after_item"
        else:
            self._state, self._post_buf = "post", ""

    # -- values of the call object ---------------------------------------------------------

    def _start_value(self) -> None:
        self._state, self._scanner = "value", JsonValueScanner()

    def _is_streaming_arguments(self) -> bool:
        return self._key in _ARGUMENT_KEYS and self._args_state != "done"

    def _step_value(self, c: str) -> None:
        if not self._scanner.text:
            if c.isspace():
                return
            if self._is_streaming_arguments():
                self._args_state = "open"
        scan = self._scanner.push(c)
        if scan is Scan.ENDED_BEFORE:
            if self._num_block_calls == 0:
                self._raw = self._raw[:-1]  # c is read again after the value
            self._end_value()
            self._step(c)
            return
        if self._is_streaming_arguments() and self._call_index is not None:
            self._emit_arguments(c)
        if scan is Scan.DONE:
            self._end_value()

    def _end_value(self) -> None:
        self._state = "after_value"
        if self._key in _ARGUMENT_KEYS and self._args_state != "done":
            self._args_state = "done"
            if self._call_index is None:
                self._args_buf = self._scanner.text
        elif self._key == "name" and self._call_index is None:
            try:
                name = json.loads(self._scanner.text)
            except json.JSONDecodeError:
                name = None
            if isinstance(name, str) and name:
                self._commit(name)
            else:
                self._fail()

    def _step_post(self, c: str) -> None:
        if not self._post_buf and c.isspace():
            return
        self._post_buf += c
        if self._end and self._post_buf == self._end:
            self._close_call()
        elif self._start and self._post_buf == self._start:
            self._close_call()
            self._open_call()
        elif not any(m and m.startswith(self._post_buf) for m in (self._end, self._start)):
            held = self._post_buf
            self._close_call()
            self._feed_text(held)
