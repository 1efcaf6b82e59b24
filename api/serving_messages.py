"""`/v1/messages` (Anthropic Messages API): create a message (plain or streamed) and count a
prompt's tokens.

A request is translated into a chat completion request and run as one turn
(`turn.start_turn`); `MessageBuilder` shapes its events into content blocks. Errors on
these routes come out in Anthropic's shape (see `errors.is_anthropic_path`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from corral.engine.outputs import RequestOutput

from .messages_output import MessageBuilder, new_message_id
from .messages_protocol import MESSAGES_RENAMES, MessagesInput, MessagesRequest
from .serving_chat import PreparedChat
from .sse import SSE_HEADERS, guarded_stream, sse_event
from .state import ServerState
from .turn import (
    chat_request,
    count_prompt_tokens,
    first_output,
    start_turn,
    turn_events,
    whole_turn,
)


async def create_message(state: ServerState, req: MessagesRequest, raw: Request) -> Response:
    """`POST /v1/messages`."""
    req.check()
    chat = chat_request(req.chat_body(), MESSAGES_RENAMES)
    prep, outputs = await start_turn(state, chat, MESSAGES_RENAMES)
    builder = MessageBuilder(new_message_id(), prep.model, len(prep.prompt_ids))
    if req.stream:
        first = await first_output(state, raw, outputs)
        body = _stream(builder, prep, outputs, first)
        return StreamingResponse(guarded_stream(body, builder.error_event, done=None),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    for event in await whole_turn(state, raw, prep, outputs):
        builder.feed(event)
    return JSONResponse(builder.message())


async def _stream(builder: MessageBuilder, prep: PreparedChat,
                  outputs: AsyncIterator[RequestOutput], first: RequestOutput
                  ) -> AsyncIterator[bytes]:
    for event in builder.start():
        yield sse_event(event, event["type"])
    async for turn_event in turn_events(prep, outputs, first):
        for event in builder.feed(turn_event):
            yield sse_event(event, event["type"])


async def count_tokens(state: ServerState, req: MessagesInput) -> JSONResponse:
    """`POST /v1/messages/count_tokens`: the prompt's tokens, as `input_tokens` of a message
    with the same system, messages and tools would count them."""
    req.check()
    chat = chat_request(req.chat_body(), MESSAGES_RENAMES)
    return JSONResponse({"input_tokens": await count_prompt_tokens(state, chat,
                                                                   MESSAGES_RENAMES)})
