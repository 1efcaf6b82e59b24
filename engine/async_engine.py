"""The engine for the server: an `LLMEngine` stepped on its own thread, fed from asyncio.

Requests and aborts travel to the engine thread through a queue; outputs travel back to
each request's asyncio queue with `call_soon_threadsafe`. The asyncio event loop never
runs model, sampling or grammar work.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

from .config import EngineConfig
from .engine_stats import EngineStats
from .llm_engine import LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams, StructuredOutputsParams

logger = logging.getLogger(__name__)

_IDLE_WAIT = 0.05  # seconds the engine thread sleeps when there is nothing to run


class AsyncLLMEngine:
    """Async front of the engine. Starts its engine thread on creation."""

    def __init__(self, config: EngineConfig | None = None, **engine_args: Any):
        self.engine = LLMEngine(config or EngineConfig(**engine_args))
        self.config = self.engine.config
        self.tokenizer = self.engine.tokenizer
        self.model_name = self.engine.model_name
        self.max_model_len = self.engine.max_model_len
        self.num_kv_blocks = self.engine.num_kv_blocks
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="corral-engine", daemon=True)
        self._thread.start()

    # ---- public API -------------------------------------------------------------------

    async def generate(self, prompt: str | list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's cumulative output as it grows; the last has finished=True.

        Raises ValueError for a request the engine refuses (prompt too long, a grammar that
        fails to compile...). Closing the iterator early aborts the request.
        """
        request_id = request_id or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        if isinstance(prompt, str):
            prompt = await asyncio.to_thread(self.engine.tokenize, prompt)
        if params.structured_outputs is not None:
            await asyncio.to_thread(self.validate_structured, params.structured_outputs)
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (loop, stream)
        added: asyncio.Future = loop.create_future()
        self._commands.put(("add", request_id, prompt, params, added))
        self._wake.set()
        finished = False
        try:
            await added
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                if item.error is not None:
                    raise ValueError(item.error)
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._commands.put(("abort", request_id))
                self._wake.set()

    async def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wake.set()

    # The grammar compiler and its registry are thread-safe: these never take the engine
    # lock, which the engine thread holds through each step (a waiter could starve).

    def validate_structured(self, spec: StructuredOutputsParams) -> None:
        """Raise ValueError now if the constraint would be refused."""
        self.engine.grammar.validate(spec)

    def register_grammar(self, name: str, definition: Any, syntax: str = "lark") -> None:
        self.engine.grammar.registry.register(name, definition, syntax=syntax)

    def unregister_grammar(self, name: str) -> None:
        self.engine.grammar.registry.unregister(name)

    def grammars(self) -> list[dict]:
        return self.engine.grammar.registry.list()

    def stats(self) -> EngineStats:
        return self.engine.get_stats()

    def grammar_stats(self) -> dict[str, list[float]]:
        """Samples since the last call: grammar compile seconds and mask-fill seconds."""
        stats = self.engine.grammar_step.stats
        mask, stats.mask_fill_seconds = stats.mask_fill_seconds, []
        compile_times: list[float] = []
        grammar = self.engine._grammar
        if grammar is not None:
            compile_times = grammar.drain_compile_times()
        return {"compile_seconds": compile_times, "mask_seconds": mask}

    def is_healthy(self) -> bool:
        """Whether the engine thread is up and serving."""
        return not self._stopped and self._thread.is_alive()

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.engine.shutdown()

    # ---- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped:
            self._drain_commands()
            if not self.engine.has_unfinished_requests():
                self._wake.wait(_IDLE_WAIT)
                self._wake.clear()
                continue
            try:
                with self._lock:
                    outputs = self.engine.step()
            except Exception as e:  # noqa: BLE001 - fail live requests, keep serving
                logger.exception("engine step failed")
                self._fail_all(e)
                continue
            for output in outputs:
                self._deliver(output.request_id, output)
            if self.engine.last_step_idle:
                self._wake.wait(0.002)
                self._wake.clear()

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, request_id, prompt, params, added = command
                try:
                    with self._lock:
                        self.engine.add_request(request_id, prompt, params)
                except Exception as e:  # noqa: BLE001 - refused request, reported to caller
                    self._resolve(request_id, added, e)
                else:
                    self._resolve(request_id, added, None)
            elif command[0] == "abort":
                with self._lock:
                    self.engine.abort(command[1])

    def _resolve(self, request_id: str, future: asyncio.Future, error: Exception | None) -> None:
        entry = self._streams.get(request_id)
        if entry is None:
            return
        loop = entry[0]

        def settle() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        loop.call_soon_threadsafe(settle)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        entry = self._streams.get(request_id)
        if entry is not None:
            loop, stream = entry
            loop.call_soon_threadsafe(stream.put_nowait, item)

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            for request_id in list(self.engine.requests):
                self.engine.abort(request_id)
                self._deliver(request_id, RuntimeError(f"engine error: {error}"))
