"""One assistant turn on the chat-completions machinery, for the Responses and Messages APIs.

Those APIs translate their request into a `ChatCompletionRequest` (n = 1) and run it here:
the same prompt rendering, tool-call grammar, `response_format` constraint, engine stream
and output parser as `/v1/chat/completions`. What comes back is the parser's events
(`ReasoningDelta`, `ContentDelta`, `ToolCallDelta`) and, last, a `TurnEnd`. A non-streamed
turn reads its whole text at once and a streamed one piece by piece; the parser makes both
give the same events, so both APIs build their responses from events alone.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from corral.engine.outputs import RequestOutput
from corral.tools.events import ContentDelta, Event, ToolCallDelta

from .chat_protocol import ChatCompletionRequest
from .errors import APIError
from .generation import generate, last_output, tokenize_prompt, until_disconnect
from .serving_chat import PreparedChat, prepare_chat
from .state import ServerState

# (pattern, replacement) pairs that rename a chat field path to another API's.
Renames = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TurnEnd:
    """How a turn ended: `finish_reason` is "stop", "length" or "tool_calls";
    `stop_sequence` is the stop string that ended it, if one did."""

    finish_reason: str
    stop_sequence: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int


TurnEvent = Event | TurnEnd


def renamed(err: APIError, renames: Renames) -> APIError:
    """`err` with its `param` (and the message's leading field name) in another API's
    names; the first matching pattern wins."""
    if not err.param:
        return err
    for pattern, replacement in renames:
        new, count = re.subn(pattern, replacement, err.param, count=1)
        if count:
            message = err.message
            if message.startswith(err.param):
                message = new + message[len(err.param):]
            return APIError(message, status=err.status, type=err.type, param=new,
                            code=err.code)
    return err


async def start_turn(state: ServerState, chat: ChatCompletionRequest,
                     renames: Renames) -> tuple[PreparedChat, AsyncIterator[RequestOutput]]:
    """Validate and prepare `chat` exactly as a chat completion, and start generating;
    refusals name the other API's fields (`renames`)."""
    try:
        prep = await prepare_chat(state, chat)
    except APIError as e:
        raise renamed(e, renames) from None
    return prep, generate(state, prep.prompt_ids, prep.params, prep.request_id)


class TurnReader:
    """Reads a turn's growing output (one completion) into parser events."""

    def __init__(self, prep: PreparedChat) -> None:
        self.parser = prep.new_parser() if prep.new_parser is not None else None
        self.num_sent_chars = 0
        self.num_calls = 0

    def step(self, out: RequestOutput) -> list[TurnEvent]:
        """The events the new text of `out` completes; with a `TurnEnd` once it finished."""
        o = out.outputs[0]
        text = o.text[self.num_sent_chars:]
        self.num_sent_chars = len(o.text)
        events: list[TurnEvent] = []
        if self.parser is None:
            if text:
                events.append(ContentDelta(text))
        else:
            events += self.parser.feed(text) if text else []
            if o.finished:
                events += self.parser.finish(truncated=o.finish_reason == "length")
        self.num_calls += sum(isinstance(e, ToolCallDelta) and e.id is not None
                              for e in events)
        if o.finished:
            events.append(self._end(out))
        return events

    def _end(self, out: RequestOutput) -> TurnEnd:
        o = out.outputs[0]
        reason = o.finish_reason if o.finish_reason in ("stop", "length") else "stop"
        if reason == "stop" and self.num_calls:
            reason = "tool_calls"
        stop = o.stop_reason if isinstance(o.stop_reason, str) else None
        cached = out.metrics.num_cached_prompt_tokens if out.metrics else 0
        return TurnEnd(reason, stop, len(out.prompt_token_ids), len(o.token_ids), cached)


async def turn_events(prep: PreparedChat, outputs: AsyncIterator[RequestOutput],
                      first: RequestOutput | None = None) -> AsyncIterator[TurnEvent]:
    """A streamed turn's events, `first` (an output already read) included."""
    reader = TurnReader(prep)
    try:
        if first is not None:
            for event in reader.step(first):
                yield event
        async for out in outputs:
            for event in reader.step(out):
                yield event
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]


async def whole_turn(state: ServerState, raw: Request, prep: PreparedChat,
                     outputs: AsyncIterator[RequestOutput]) -> list[TurnEvent]:
    """A non-streamed turn's events (aborted if the client leaves first)."""
    final = await until_disconnect(raw, last_output(outputs))
    return TurnReader(prep).step(final)


async def first_output(state: ServerState, raw: Request,
                       outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    """A streamed turn's first output, so that refusals still get an HTTP error status."""
    try:
        return await until_disconnect(raw, outputs.__anext__())
    except BaseException:
        await outputs.aclose()  # type: ignore[attr-defined]
        raise


async def count_prompt_tokens(state: ServerState, chat: ChatCompletionRequest,
                              renames: Renames) -> int:
    """The number of tokens `chat`'s prompt (messages and tools rendered) takes."""
    from corral.tools import render_chat_prompt

    def count() -> int:
        uses_tools = chat.uses_tools()
        prompt = render_chat_prompt(
            state.tokenizer, chat.message_dicts(), chat.tool_dicts() if uses_tools else None,
            tool_choice=chat.tool_choice_value() if uses_tools else None,
            fmt=state.tool_format, template_kwargs=chat.template_kwargs())
        return len(tokenize_prompt(state, prompt, chat=True, param="messages"))

    try:
        chat.check()
        state.check_chat_model(chat.model)
        return await asyncio.to_thread(count)
    except ValueError as e:
        raise renamed(APIError.from_value_error(e), renames) from None
    except APIError as e:
        raise renamed(e, renames) from None


def chat_request(body: dict[str, Any], renames: Renames) -> ChatCompletionRequest:
    """A `ChatCompletionRequest` from a translated body; a field it refuses is named in the
    other API's terms."""
    from pydantic import ValidationError

    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ()))
        raise renamed(APIError(f"{param}: {first.get('msg')}", param=param), renames) \
            from None
    except APIError as e:
        raise renamed(e, renames) from None
