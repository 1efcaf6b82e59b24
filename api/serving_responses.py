"""`/v1/responses`: create (plain or streamed), retrieve and delete responses.

A request is translated into a chat completion request and run as one turn
(`turn.start_turn`); `ResponseBuilder` shapes its events into output items. Stored
responses (`store`, true by default) live in the app's `ResponseStore`; a request with
`previous_response_id` continues that response's conversation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from corral.engine.outputs import RequestOutput

from .errors import APIError
from .responses_items import normalize_input
from .responses_output import ResponseBuilder, new_response_id
from .responses_protocol import RESPONSES_RENAMES, ResponsesRequest
from .serving_chat import PreparedChat
from .sse import SSE_HEADERS, guarded_stream, sse_event
from .state import ServerState
from .turn import TurnEnd, chat_request, first_output, start_turn, turn_events, whole_turn


async def create_response(state: ServerState, req: ResponsesRequest, raw: Request) -> Response:
    """`POST /v1/responses`."""
    req.check()
    history: list[dict[str, Any]] = []
    if req.previous_response_id:
        previous = await asyncio.to_thread(state.responses.get, req.previous_response_id)
        if previous is None:
            raise APIError(f"Previous response with id '{req.previous_response_id}' not found.",
                           status=404, param="previous_response_id",
                           code="previous_response_not_found")
        history = previous.conversation()
    items = normalize_input(req.input)
    chat = chat_request(req.chat_body(history, items), RESPONSES_RENAMES)
    prep, outputs = await start_turn(state, chat, RESPONSES_RENAMES)
    builder = ResponseBuilder(new_response_id(), prep.model, req.echo())
    conversation = [*history, *items]
    if req.stream:
        first = await first_output(state, raw, outputs)
        body = _stream(state, req, builder, prep, outputs, first, conversation)
        return StreamingResponse(guarded_stream(body, builder.error_event, done=None),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    for event in await whole_turn(state, raw, prep, outputs):
        builder.feed(event)
    response = builder.response()
    if req.store is not False:
        await asyncio.to_thread(state.responses.put, response, conversation)
    return JSONResponse(response)


async def _stream(state: ServerState, req: ResponsesRequest, builder: ResponseBuilder,
                  prep: PreparedChat, outputs: AsyncIterator[RequestOutput],
                  first: RequestOutput, conversation: list[dict[str, Any]]
                  ) -> AsyncIterator[bytes]:
    for event in builder.start():
        yield sse_event(event, event["type"])
    async for turn_event in turn_events(prep, outputs, first):
        events = builder.feed(turn_event)
        if isinstance(turn_event, TurnEnd) and req.store is not False:
            # Stored before the last event: a client may continue from it at once.
            await asyncio.to_thread(state.responses.put, builder.response(), conversation)
        for event in events:
            yield sse_event(event, event["type"])


def _not_found(response_id: str) -> APIError:
    return APIError(f"Response with id '{response_id}' not found.", status=404,
                    param="response_id", code="not_found")


async def get_response(state: ServerState, response_id: str) -> JSONResponse:
    """`GET /v1/responses/{response_id}`."""
    stored = await asyncio.to_thread(state.responses.get, response_id)
    if stored is None:
        raise _not_found(response_id)
    return JSONResponse(stored.response)


async def delete_response(state: ServerState, response_id: str) -> JSONResponse:
    """`DELETE /v1/responses/{response_id}`."""
    if not await asyncio.to_thread(state.responses.delete, response_id):
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})
