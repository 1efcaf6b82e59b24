"""Qwen3-Coder's XML calls -> content and tool calls, one character at a time.

Text outside `<tool_call>` blocks is content (whitespace next to a call is dropped, as for
Hermes blocks). Inside a block, `<function=NAME>` makes the call (first delta: id, name);
each `<parameter=P>` value becomes a key of the JSON arguments, streamed as it arrives: a
string value character by character (JSON-escaped), any other value once its end tag is
read (converted from its raw text: JSON, or `True`/`False`/`None` as the template writes
them). A block that breaks the layout before its function name is given back as content;
after that, the rest up to `</tool_call>` is skipped.
"""

from __future__ import annotations

import json
from typing import Any

from corral.grammars.param_error import ParamError
from corral.tools.call_format import CALL_END, CALL_START
from corral.tools.events import ContentDelta, Event, ToolCall, ToolCallDelta, coalesce, new_call_id
from corral.tools.functions import parse_tools

FUNCTION_TAG = "<function="
PARAMETER_TAG = "<parameter="
FUNCTION_END = "</function>"
PARAMETER_END = "</parameter>"
_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def value_kinds(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, str]]:
    """For each function, each parameter's kind: "string" (raw text) or "json"."""
    kinds: dict[str, dict[str, str]] = {}
    for spec in parse_tools(tools, check_schemas=False):
        props = spec.parameters.get("properties") or {}
        kinds[spec.name] = {name: "string" if isinstance(p, dict) and p.get("type") == "string"
                            else "json" for name, p in props.items()}
    return kinds


def convert_value(raw: str, kind: str) -> Any:
    """A raw parameter value as a JSON value."""
    if kind == "string":
        return raw
    if raw in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[raw]
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


class XmlCallParser:
    """Streaming and final parser of one completion's text (see the module docstring)."""

    def __init__(self, kinds: dict[str, dict[str, str]] | None = None) -> None:
        self.kinds = kinds or {}
        self._pending: list[Event] = []
        self._is_finished = False
        self._content_parts: list[str] = []
        self._calls: list[dict[str, str]] = []
        self._ws_hold = ""
        self._marker_hold = ""
        self._is_after_call = False
        self._in_call = False
        self._reset_call("")

    # -- public interface ------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        if self._is_finished:
            raise ParamError("text", "the parser was already finished")
        for c in text:
            self._step(c)
        return self._drain()

    def finish(self, truncated: bool = False) -> list[Event]:
        """Settle held text and an open call (`truncated`: cut by a token limit, so an open
        call keeps the arguments read so far, and one without a name is dropped)."""
        if self._is_finished:
            return []
        if truncated:
            self._marker_hold = ""
        if self._in_call:
            if self._index is None:
                if truncated:
                    self._in_call = False
                else:
                    self._release()
            elif truncated:
                self._in_call = False
                self._is_after_call = True
            else:
                if self._state == "value":
                    held = self._value
                    self._value = ""
                    self._end_value(held.removesuffix("\n"))
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
    def reasoning(self) -> str | None:
        return None

    @property
    def content(self) -> str | None:
        return "".join(self._content_parts) or None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(c["id"], c["name"], c["arguments"]) for c in self._calls]

    # -- emitting --------------------------------------------------------------------------

    def _drain(self) -> list[Event]:
        events, self._pending = coalesce(self._pending), []
        return events

    def _emit(self, event: Event) -> None:
        self._pending.append(event)
        if isinstance(event, ContentDelta):
            self._content_parts.append(event.text)
        elif isinstance(event, ToolCallDelta):
            if event.id is not None:
                self._calls.append({"id": event.id, "name": event.name or "", "arguments": ""})
            self._calls[event.index]["arguments"] += event.arguments

    def _emit_content(self, text: str) -> None:
        if text:
            self._emit(ContentDelta(text))

    def _emit_text(self, text: str) -> None:
        if self._ws_hold and not self._is_after_call:
            self._emit_content(self._ws_hold)
        self._ws_hold = ""
        self._is_after_call = False
        self._emit_content(text)

    def _emit_arguments(self, fragment: str) -> None:
        if fragment and self._index is not None:
            self._emit(ToolCallDelta(self._index, None, None, fragment))

    # -- text mode -------------------------------------------------------------------------

    def _step(self, c: str) -> None:
        if self._in_call:
            self._step_call(c)
        elif self._marker_hold or c == CALL_START[0]:
            self._marker_hold += c
            if self._marker_hold == CALL_START:
                self._marker_hold = ""
                self._open_call()
            elif not CALL_START.startswith(self._marker_hold):
                held, self._marker_hold = self._marker_hold, ""
                self._emit_text(held[0])
                for rest in held[1:]:
                    self._step(rest)
        elif c.isspace():
            self._ws_hold += c
        else:
            self._emit_text(c)

    # -- call mode -------------------------------------------------------------------------

    def _reset_call(self, dropped_ws: str) -> None:
        self._state = "open"  # open|params|value|close|skip
        self._buf = ""  # the tag being read
        self._raw = ""  # text read since the marker, until the call has a name
        self._dropped_ws = dropped_ws
        self._index: int | None = None
        self._function = ""
        self._num_params = 0
        self._param = ""
        self._value = ""  # the value text not yet emitted
        self._is_value_start = False

    def _open_call(self) -> None:
        dropped, self._ws_hold = self._ws_hold, ""
        self._in_call = True
        self._reset_call(dropped)

    def _release(self) -> None:
        """Give a block that broke the layout before its name back as content."""
        rest = self._raw
        self._in_call = False
        self._ws_hold = self._dropped_ws
        self._emit_text(CALL_START)
        for c in rest:
            self._step(c)

    def _fail(self) -> None:
        if self._index is None:
            self._release()
        else:
            self._state, self._buf = "skip", ""

    def _close_call(self) -> None:
        self._emit_arguments("}")
        self._in_call = False
        self._is_after_call = True
        self._reset_call("")

    def _step_call(self, c: str) -> None:
        if self._index is None:
            self._raw += c
        state = self._state
        if state == "value":
            self._step_value(c)
            return
        self._buf += c
        head = self._buf.lstrip()
        if state == "skip":
            self._buf = self._buf[-len(CALL_END):]
            if self._buf == CALL_END:
                self._close_call()
        elif not head:
            self._buf = ""  # blanks between tags
        elif state == "open":
            self._step_tag(head, FUNCTION_TAG, self._commit, ())
        elif state == "params":
            self._step_tag(head, PARAMETER_TAG, self._start_value, (FUNCTION_END,))
        elif state == "close":
            if head == CALL_END:
                self._close_call()
            elif not CALL_END.startswith(head):
                self._close_call()
                for rest in head:
                    self._step(rest)

    def _step_tag(self, head: str, tag: str, on_name: Any, others: tuple[str, ...]) -> None:
        """Read `<tag=NAME>` (calling `on_name`) or one of the closing tags `others`."""
        if head.startswith(tag):
            name = head[len(tag):]
            if name.endswith(">"):
                name = name[:-1]
                if name and not any(ch in name for ch in "<>\n"):
                    self._buf = ""
                    on_name(name)
                else:
                    self._fail()
            elif any(ch in name for ch in "<\n"):
                self._fail()
        elif head in others:
            self._buf = ""
            self._state = "close"
        elif not (tag.startswith(head) or any(o.startswith(head) for o in others)):
            self._fail()

    def _commit(self, name: str) -> None:
        self._function = name
        self._index = len(self._calls)
        self._emit(ToolCallDelta(self._index, new_call_id(), name, ""))
        self._emit_arguments("{")
        self._state = "params"

    def _kind(self) -> str:
        return self.kinds.get(self._function, {}).get(self._param, "json")

    def _start_value(self, name: str) -> None:
        self._param = name
        self._state, self._value, self._is_value_start = "value", "", True
        if self._kind() == "string":
            self._emit_arguments((", " if self._num_params else "") + json.dumps(name) + ': "')
            self._num_params += 1

    def _step_value(self, c: str) -> None:
        if self._is_value_start:
            self._is_value_start = False
            if c == "\n":
                return
        self._value += c
        if self._value.endswith(PARAMETER_END):
            raw = self._value[:-len(PARAMETER_END)].removesuffix("\n")
            self._value = ""
            self._end_value(raw)
            self._state, self._buf = "params", ""
        elif self._kind() == "string":
            keep = _held_from(self._value)
            self._emit_arguments(_escaped(self._value[:keep]))
            self._value = self._value[keep:]

    def _end_value(self, raw: str) -> None:
        """End the parameter: `raw` is its text not yet emitted."""
        if self._kind() == "string":
            self._emit_arguments(_escaped(raw) + '"')
            return
        value = json.dumps(convert_value(raw, "json"), ensure_ascii=False)
        self._emit_arguments((", " if self._num_params else "") + json.dumps(self._param)
                             + ": " + value)
        self._num_params += 1


def _escaped(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _held_from(value: str) -> int:
    """Where the end of `value` that may begin the end tag (with its newline) starts."""
    for i in range(max(0, len(value) - len(PARAMETER_END) - 1), len(value)):
        rest = value[i:]
        if ("\n" + PARAMETER_END).startswith(rest) or PARAMETER_END.startswith(rest):
            return i
    return len(value)
