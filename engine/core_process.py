"""The engine-core process: one `LLMEngine` stepped by one loop, fed over ZeroMQ.

Started by `EngineCoreClient` with the `spawn` context and not daemonic (it may start
worker processes of its own); it leaves when its parent does (a watchdog thread polls the
parent's pid) and ignores SIGINT, which the server's own shutdown handles. Each turn of
the loop drains the client's messages (add, abort, grammar calls, shutdown), steps the
engine when it has work, and sends the step's outputs as deltas together with the stats.
Grammar calls run on the threads of `GrammarCalls`; nothing the client sends blocks a step.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from dataclasses import astuple

import msgspec
import zmq

from .config import EngineConfig
from .core_calls import GrammarCalls
from .core_messages import (
    AbortRequests,
    AddRequest,
    ErrorInfo,
    Ready,
    RequestDelta,
    Shutdown,
    StartupFailed,
    StepOutputs,
    UtilityCall,
    core_decoder,
)
from .llm_engine import LLMEngine
from .output_deltas import DeltaEncoder

logger = logging.getLogger(__name__)

_IDLE_POLL_MS = 50  # how long the loop waits for a message when there is no work
_STALLED_POLL_MS = 2  # ... when the last step could do nothing (grammars compiling)
_IDLE_STATS_SECONDS = 0.2  # how often idle stats are pushed, when they changed
_PARENT_POLL_SECONDS = 0.5


def run_engine_core(config: EngineConfig, input_address: str, output_address: str,
                    parent_pid: int, log_level: int = logging.INFO) -> None:
    """The process's entry point: build the engine, report ready, serve until shutdown."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s [core]: %(message)s")
    _watch_parent(parent_pid)
    context = zmq.Context()
    output = context.socket(zmq.PUSH)
    output.setsockopt(zmq.SNDHWM, 0)
    output.setsockopt(zmq.LINGER, 2000)
    output.connect(output_address)
    inbox = context.socket(zmq.PULL)
    inbox.setsockopt(zmq.RCVHWM, 0)
    inbox.connect(input_address)
    encoder = msgspec.msgpack.Encoder()
    try:
        engine = LLMEngine(config)
        engine.prepare_grammars()  # before serving: never a stall of the loop later
        gc.collect()
        gc.freeze()  # the grammar tables too stay out of the collector's sight
    except BaseException as e:  # noqa: BLE001 - reported to the client, then exit
        logger.exception("engine core failed to start")
        output.send(encoder.encode(StartupFailed(ErrorInfo.from_exception(e))))
        output.close()
        inbox.close(linger=0)
        context.term()
        raise SystemExit(1) from None
    calls = GrammarCalls(engine, context, output_address)
    try:
        output.send(encoder.encode(Ready(engine.model_name, engine.max_model_len,
                                         engine.num_kv_blocks, engine.vocab_size, os.getpid())))
        EngineCore(engine, inbox, output, calls).run()
    finally:
        calls.shutdown()
        engine.shutdown()
        inbox.close(linger=0)
        output.close()
        context.term()


def _watch_parent(parent_pid: int) -> None:
    """Exit at once when the parent is gone (this process is re-parented)."""

    def watch() -> None:
        while True:
            time.sleep(_PARENT_POLL_SECONDS)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="corral-core-parent-watch", daemon=True).start()


class EngineCore:
    """The loop of the engine-core process."""

    def __init__(self, engine: LLMEngine, inbox: zmq.Socket, output: zmq.Socket,
                 calls: GrammarCalls) -> None:
        self.engine = engine
        self._inbox = inbox
        self._output = output
        self._calls = calls
        self._decoder = core_decoder()
        self._encoder = msgspec.msgpack.Encoder()
        self._deltas = DeltaEncoder()
        self._pending: list[RequestDelta] = []  # refusals, sent with the next outputs
        self._running = True
        self._last_stats: tuple | None = None
        self._last_stats_time = 0.0

    def run(self) -> None:
        engine = self.engine
        poll_ms = 0
        while self._running:
            if self._inbox.poll(poll_ms):
                self._drain()
            if not self._running:
                break
            if not engine.has_unfinished_requests():
                self._send(force=bool(self._pending))
                poll_ms = _IDLE_POLL_MS
                continue
            self._step()
            poll_ms = _STALLED_POLL_MS if engine.last_step_idle else 0

    def _drain(self) -> None:
        while True:
            try:
                frame = self._inbox.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                message = self._decoder.decode(frame.buffer)
            except Exception as e:  # noqa: BLE001 - a bad message must not end the loop
                self._refuse_undecodable(frame.buffer, e)
                continue
            self._handle(message)

    def _refuse_undecodable(self, data: memoryview, error: Exception) -> None:
        """Fail the request a message that does not decode was adding, if it says which."""
        logger.error("dropped a message the core cannot decode: %s", error)
        try:
            raw = msgspec.msgpack.decode(data)
        except msgspec.DecodeError:
            return
        if isinstance(raw, list) and len(raw) > 1 and raw[0] == "add" \
                and isinstance(raw[1], str):
            info = ErrorInfo("value", f"the engine core cannot read the request: {error}")
            self._pending.append(RequestDelta(raw[1], [], True, exception=info))

    def _handle(self, message: object) -> None:
        engine = self.engine
        if isinstance(message, AddRequest):
            try:
                engine.add_request(message.request_id, message.prompt_token_ids, message.params)
            except Exception as e:  # noqa: BLE001 - a refused request, reported to its caller
                self._pending.append(RequestDelta(message.request_id, [], True,
                                                  exception=ErrorInfo.from_exception(e)))
        elif isinstance(message, AbortRequests):
            for request_id in message.request_ids:
                engine.abort(request_id)
                self._deltas.forget(request_id)
        elif isinstance(message, UtilityCall):
            self._calls.submit(message)
        elif isinstance(message, Shutdown):
            self._running = False

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # noqa: BLE001 - fail the live requests, keep serving
            logger.exception("engine step failed")
            self._fail_all(e)
            return
        for output in outputs:
            delta = self._deltas.encode(output)
            if delta is not None:
                self._pending.append(delta)
        self._send(force=bool(self._pending))

    def _fail_all(self, error: Exception) -> None:
        info = ErrorInfo("runtime", f"engine error: {error}")
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
            self._deltas.forget(request_id)
            self._pending.append(RequestDelta(request_id, [], True, exception=info))
        self._send(force=True)

    def _send(self, force: bool) -> None:
        """Send the pending deltas with the stats; when idle (not `force`), only stats that
        changed or new grammar samples, at most every `_IDLE_STATS_SECONDS`."""
        now = time.monotonic()
        if not force and now - self._last_stats_time < _IDLE_STATS_SECONDS:
            return
        self._last_stats_time = now
        engine = self.engine
        stats = engine.get_stats()
        key = astuple(stats)
        step_stats = engine.grammar_step.stats
        mask, step_stats.mask_fill_seconds = step_stats.mask_fill_seconds, []
        grammar = engine._grammar
        compile_times = grammar.drain_compile_times() if grammar is not None else []
        if not force and key == self._last_stats and not mask and not compile_times:
            return
        self._last_stats = key
        message = StepOutputs(self._pending, stats, compile_times, mask)
        self._pending = []
        self._output.send(self._encoder.encode(message))
