"""A turn's events -> a Responses API response object and its stream events.

`ResponseBuilder` opens an output item when the kind of event changes (reasoning ->
`reasoning` item, content -> `message` item with one `output_text` part, a new tool call ->
`function_call` item) and closes it when the next one opens or the turn ends. The same
builder makes the non-streamed response (events discarded) and the stream, so a stream's
deltas always join to the response it ends with.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from corral.tools.events import ContentDelta, ReasoningDelta

from .errors import APIError
from .sse import sse_event
from .turn import TurnEnd, TurnEvent


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def new_response_id() -> str:
    return _id("resp")


class ResponseBuilder:
    """Builds one response from a turn's events (see the module docstring)."""

    def __init__(self, response_id: str, model: str, echo: dict[str, Any]) -> None:
        self.id = response_id
        self.model = model
        self.echo = echo
        self.created_at = int(time.time())
        self.status = "in_progress"
        self.incomplete_details: dict[str, str] | None = None
        self.usage: dict[str, Any] | None = None
        self.output: list[dict[str, Any]] = []
        self._open: str | None = None  # kind of the open (last) item
        self._text = ""  # text of the open item's part (or arguments of its call)
        self._seq = 0

    def response(self) -> dict[str, Any]:
        """The response object as it stands."""
        return {"id": self.id, "object": "response", "created_at": self.created_at,
                "status": self.status, "background": False, "error": None,
                "incomplete_details": self.incomplete_details, "model": self.model,
                "output": [dict(item) for item in self.output], "usage": self.usage,
                **self.echo}

    def event(self, kind: str, **body: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **body}
        self._seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        """`response.created` and `response.in_progress`."""
        return [self.event("response.created", response=self.response()),
                self.event("response.in_progress", response=self.response())]

    def feed(self, event: TurnEvent) -> list[dict[str, Any]]:
        """The stream events for one turn event."""
        if isinstance(event, TurnEnd):
            return self.finish(event)
        if isinstance(event, ReasoningDelta):
            return self._delta("reasoning", event.text)
        if isinstance(event, ContentDelta):
            return self._delta("message", event.text)
        events = []
        if event.id is not None:
            events += self._close()
            events += self._add({"id": _id("fc"), "type": "function_call",
                                 "status": "in_progress", "call_id": event.id,
                                 "name": event.name, "arguments": ""}, "function_call")
        if event.arguments:
            events += self._delta("function_call", event.arguments)
        return events

    def finish(self, end: TurnEnd) -> list[dict[str, Any]]:
        """Close the open item; `response.completed` (or `response.incomplete`)."""
        is_cut = end.finish_reason == "length"
        events = self._close("incomplete" if is_cut else "completed")
        self.status = "incomplete" if is_cut else "completed"
        if is_cut:
            self.incomplete_details = {"reason": "max_output_tokens"}
        self.usage = {
            "input_tokens": end.num_prompt_tokens,
            "input_tokens_details": {"cached_tokens": end.num_cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens": end.num_output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": end.num_prompt_tokens + end.num_output_tokens,
        }
        kind = "response.incomplete" if is_cut else "response.completed"
        return [*events, self.event(kind, response=self.response())]

    def error_event(self, err: APIError) -> bytes:
        """An error after the stream began, as the stream's `error` event."""
        body = self.event("error", code=err.code or err.type, message=err.message,
                          param=err.param)
        return sse_event(body, "error")

    # -- items -------------------------------------------------------------------------------

    def _add(self, item: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        self.output.append(item)
        self._open, self._text = kind, ""
        index = len(self.output) - 1
        events = [self.event("response.output_item.added", output_index=index, item=dict(item))]
        part = self._part("")
        if part is not None:
            events.append(self.event("response.content_part.added", item_id=item["id"],
                                     output_index=index, content_index=0, part=part))
        return events

    def _part(self, text: str) -> dict[str, Any] | None:
        if self._open == "message":
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        if self._open == "reasoning":
            return {"type": "reasoning_text", "text": text}
        return None

    def _delta(self, kind: str, text: str) -> list[dict[str, Any]]:
        events = []
        if self._open != kind:
            events += self._close()
            item = ({"id": _id("rs"), "type": "reasoning", "summary": [], "content": [],
                     "status": "in_progress"} if kind == "reasoning" else
                    {"id": _id("msg"), "type": "message", "status": "in_progress",
                     "role": "assistant", "content": []})
            events += self._add(item, kind)
        self._text += text
        where = {"item_id": self.output[-1]["id"], "output_index": len(self.output) - 1}
        if kind == "function_call":
            return [*events, self.event("response.function_call_arguments.delta", **where,
                                        delta=text)]
        name = "response.output_text.delta" if kind == "message" else \
            "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        return [*events, self.event(name, **where, content_index=0, delta=text, **extra)]

    def _close(self, status: str = "completed") -> list[dict[str, Any]]:
        if self._open is None:
            return []
        item, index = self.output[-1], len(self.output) - 1
        where = {"item_id": item["id"], "output_index": index}
        events = []
        if self._open == "function_call":
            item["arguments"] = self._text
            events.append(self.event("response.function_call_arguments.done", **where,
                                     name=item["name"], arguments=self._text))
        else:
            part = self._part(self._text)
            name = "response.output_text.done" if self._open == "message" else \
                "response.reasoning_text.done"
            extra = {"logprobs": []} if self._open == "message" else {}
            events.append(self.event(name, **where, content_index=0, text=self._text, **extra))
            events.append(self.event("response.content_part.done", **where, content_index=0,
                                     part=part))
            item["content"] = [part]
        item["status"] = status
        self._open, self._text = None, ""
        return [*events, self.event("response.output_item.done", output_index=index,
                                    item=dict(item))]
