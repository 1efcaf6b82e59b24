"""Grammar calls inside the engine core, answered off its step loop.

Validation and registration may take a while (a registration compiles under the grammar
deadline). They run on worker threads of the core that each own a ZeroMQ socket to the
client, so a reply never waits for a step, and the step loop never waits for a call. The
grammar compiler and its registry are thread-safe and hold no lock across a step.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import msgspec
import zmq

from .core_messages import ErrorInfo, Reply, UtilityCall
from .llm_engine import LLMEngine
from .sampling_params import StructuredOutputsParams

logger = logging.getLogger(__name__)


class GrammarCalls:
    """`num_threads` workers answering `UtilityCall`s in arrival order per worker."""

    def __init__(self, engine: LLMEngine, context: zmq.Context, reply_address: str,
                 num_threads: int = 4) -> None:
        self._engine = engine
        self._context = context
        self._address = reply_address
        self._calls: queue.SimpleQueue[UtilityCall | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"corral-core-grammar-{i}",
                                          daemon=True) for i in range(num_threads)]
        for t in self._threads:
            t.start()

    def submit(self, call: UtilityCall) -> None:
        self._calls.put(call)

    def shutdown(self, timeout: float = 5.0) -> None:
        for _ in self._threads:
            self._calls.put(None)
        for t in self._threads:
            t.join(timeout)

    def _work(self) -> None:
        socket = self._context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, 1000)
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.connect(self._address)
        encoder = msgspec.msgpack.Encoder()
        try:
            while (call := self._calls.get()) is not None:
                try:
                    reply = Reply(call.call_id, self._run(call.method, call.args))
                except Exception as e:  # noqa: BLE001 - every failure is the caller's answer
                    reply = Reply(call.call_id, error=ErrorInfo.from_exception(e))
                socket.send(encoder.encode(reply))
        finally:
            socket.close()

    def _run(self, method: str, args: list[Any]) -> Any:
        grammar = self._engine.grammar
        if method == "validate":
            grammar.validate(msgspec.convert(args[0], StructuredOutputsParams))
            return None
        if method == "register":
            name, definition, syntax = args
            grammar.registry.register(name, definition, syntax=syntax)
            return None
        if method == "unregister":
            grammar.registry.unregister(args[0])
            return None
        if method == "grammars":
            return grammar.registry.list()
        raise ValueError(f"unknown engine-core call {method!r}")
