"""One request's outputs on its event loop, merged when the consumer falls behind.

The engine-core client's reader thread hands each step's deltas to the request's event
loop in one wake-up per step; `OutputStream` applies them to the request's assembler when
the consumer asks for the next output. Outputs are cumulative, so deltas that arrived while
the consumer was busy (writing the last event to a slow socket, say) make one output
rather than one each: a server that falls behind sends fewer, larger events instead of
falling further behind. Nothing is lost: the last output always holds every token.

Everything here runs on the stream's event loop thread (no locks).
"""

from __future__ import annotations

import asyncio

from .core_messages import RequestDelta
from .output_deltas import RequestAssembler
from .outputs import RequestOutput


class OutputStream:
    """The latest cumulative output of one request, awaited by one consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, assembler: RequestAssembler) -> None:
        self.loop = loop
        self.assembler = assembler
        self._pending: list[RequestDelta] = []
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None

    def push(self, delta: RequestDelta) -> None:
        """A step's delta arrived (loop thread)."""
        self._pending.append(delta)
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The request can get no more outputs: `next()` raises `error` once the deltas
        already pushed are consumed (loop thread)."""
        if self._error is None:
            self._error = error
        self._wake()

    async def next(self) -> RequestOutput:
        """The output after every delta pushed so far; waits for one if none is new.
        Raises the error a delta carries (a refused request) or the one `fail` set."""
        while not self._pending and self._error is None:
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not self._pending:
            raise self._error  # type: ignore[misc]
        pending, self._pending = self._pending, []
        for delta in pending:
            error = self.assembler.update(delta)
            if error is not None:
                raise error
        return self.assembler.output()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
