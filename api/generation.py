"""Running engine requests from the routes: errors mapped, metrics fed, aborts guaranteed.

Every request's engine generator is closed (and the request aborted, freeing its blocks)
however the route ends: normally, by an error, or because the client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request

from corral.engine.outputs import RequestOutput
from corral.engine.sampling_params import SamplingParams
from corral.grammars.param_error import ParamError

from .admission import timed_out
from .errors import APIError
from .state import ServerState

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The HTTP client went away before the answer was ready."""


async def generate(state: ServerState, prompt: str | list[int], params: SamplingParams,
                   request_id: str) -> AsyncIterator[RequestOutput]:
    """The engine's outputs for one request; a refusal becomes a 400 `APIError`, a full
    queue a 429 and a request past the server's timeout a 504 (see `admission.py`)."""
    admission = state.admission
    admission.admit()
    waiting = True
    tracker = state.metrics.tracker()
    finished = False
    stream = state.engine.generate(prompt, params, request_id)
    outputs = stream if admission.request_timeout is None else \
        _until(stream, admission.request_timeout)
    try:
        try:
            async for out in outputs:
                if waiting:
                    waiting = False
                    admission.started()
                tracker.update(sum(len(o.token_ids) for o in out.outputs))
                if out.finished:
                    finished = True
                    tracker.finish(o.finish_reason for o in out.outputs)
                yield out
        except ValueError as e:
            finished = True
            raise APIError.from_value_error(e) from None
    finally:
        if waiting:
            admission.started()
        with contextlib.suppress(Exception):
            await outputs.aclose()  # type: ignore[attr-defined]
        if not finished:  # the client left, an error, or the deadline: free its blocks
            with contextlib.suppress(Exception):
                await state.engine.abort(request_id)


async def _until(stream: AsyncIterator[T], seconds: float) -> AsyncIterator[T]:
    """`stream`'s items until `seconds` have passed, then a 504 `APIError`."""
    loop = asyncio.get_running_loop()
    expiry = loop.create_future()
    timer = loop.call_later(seconds, lambda: expiry.done() or expiry.set_result(None))
    try:
        while True:
            item = asyncio.ensure_future(stream.__anext__())
            await asyncio.wait({item, expiry}, return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                item.cancel()
                with contextlib.suppress(BaseException):
                    await item
                raise timed_out(seconds)
            try:
                value = item.result()
            except StopAsyncIteration:
                return
            yield value
    finally:
        timer.cancel()
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]


async def last_output(outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    """Drain a request's outputs; the final, finished one."""
    final = None
    try:
        async for out in outputs:
            final = out
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
    if final is None:
        raise APIError("the engine returned no output", status=500, type="server_error")
    return final


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so aborting its requests) if the client leaves.

    A watcher awaits the connection's next ASGI message: once the body is read, only a
    disconnect comes. Nothing is polled, so requests waiting in a long queue cost the API
    process nothing (polling `Request.is_disconnected` every quarter second took a quarter
    of its busy time with 192 streams queued)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientDisconnected()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (the body's messages, if unread, are skipped)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def gather_or_cancel(*works: Awaitable[T]) -> list[T]:
    """Like `asyncio.gather`, but the first failure (or a cancel) cancels the others."""
    tasks = [asyncio.ensure_future(w) for w in works]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def merged(streams: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """Items of several async iterators as they come, tagged with the iterator's index."""
    if len(streams) == 1:  # the usual request: no pump task, no queue hop per item
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            with contextlib.suppress(Exception):
                await streams[0].aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None, bool]] = asyncio.Queue()

    async def pump(i: int, it: AsyncIterator[Any]) -> None:
        try:
            async for item in it:
                await queue.put((i, item, None, False))
            await queue.put((i, None, None, True))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, None, e, True))
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            with contextlib.suppress(Exception):
                await it.aclose()  # type: ignore[attr-defined]

    tasks = [asyncio.create_task(pump(i, it)) for i, it in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item, err, done = await queue.get()
            if err is not None:
                raise err
            if done:
                remaining -= 1
                continue
            yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def tokenize_prompt(state: ServerState, prompt: str | list[int], *, chat: bool,
                    param: str) -> list[int]:
    """Token ids of a prompt; chat prompts already hold their special tokens."""
    if isinstance(prompt, str):
        return list(state.tokenizer(prompt, add_special_tokens=not chat)["input_ids"])
    vocab = len(state.tokenizer)
    for t in prompt:
        if not 0 <= t < vocab:
            raise APIError(f"{param}: token id {t} is outside the vocabulary (0..{vocab - 1})",
                           param=param)
    return list(prompt)


async def validate_constraint(state: ServerState, params: SamplingParams, param: str) -> None:
    """Refuse a constraint the engine cannot enforce before any work starts (400)."""
    spec = params.structured_outputs
    if spec is None:
        return
    try:
        await asyncio.to_thread(state.engine.validate_structured, spec)
    except ValueError as e:
        # A constraint given as `structured_outputs` keeps the engine's field (e.g.
        # `structured_outputs.json`); one built from `response_format` or `tools` is named so.
        is_param = isinstance(e, ParamError) and e.param.startswith("structured_outputs")
        if is_param and param == "structured_outputs":
            error = e
        else:
            error = ParamError(param, e.detail if is_param else str(e))
        raise APIError(str(error), param=error.param, code="invalid_structured_output") from None
