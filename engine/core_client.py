"""`EngineCoreClient`: the server's engine, run in an engine-core process.

It has the public interface of `AsyncLLMEngine`, so the API uses either unchanged. The
API process keeps its own tokenizer (prompts are tokenized here) and rebuilds each
request's cumulative `RequestOutput` from the deltas the core sends. One reader thread
receives everything the core sends and watches the process: when the core dies, every live
request and pending call fails with `EngineDeadError`, new requests are refused with it,
and `is_healthy()` turns False.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import dataclasses
import itertools
import logging
import threading
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import zmq

from corral.grammars.param_error import ParamError

from .config import EngineConfig
from .core_launch import CoreProcess
from .core_messages import (
    AbortRequests,
    AddRequest,
    Reply,
    Shutdown,
    StepOutputs,
    UtilityCall,
    client_decoder,
    wire_params,
    wire_structured,
)
from .engine_errors import EngineDeadError
from .engine_stats import EngineStats
from .model_files import resolve_model_dir
from .output_deltas import RequestAssembler
from .output_stream import OutputStream
from .outputs import RequestOutput
from .sampling_params import SamplingParams, StructuredOutputsParams
from .token_bytes import token_bytes
from .tokenizer import encode_prompt, load_tokenizer

logger = logging.getLogger(__name__)

_CALL_TIMEOUT = 30.0  # seconds a grammar call may take beyond the compile deadline
_READER_POLL_MS = 100
_SHUTDOWN_TIMEOUT = 15.0


class EngineCoreClient:
    """Async front of an engine-core process. Starts the process on creation and returns
    once the engine is built; `shutdown()` stops it (it also leaves if this process dies).
    """

    def __init__(self, config: EngineConfig | None = None, *,
                 startup_timeout: float | None = None, **engine_args: Any) -> None:
        self.config = config = config or EngineConfig(**engine_args)
        model_dir = resolve_model_dir(config.model, need_config=config.shape is None)
        self._context = zmq.Context()
        self._core = CoreProcess(config, self._context)
        try:
            self.tokenizer = load_tokenizer(config.tokenizer or model_dir)  # while it starts
            token_bytes(self.tokenizer, True)  # the detokenizers' table (this side makes text)
            ready = self._core.wait_ready(client_decoder(), startup_timeout)
        except BaseException:
            self._core.stop(0)
            self._core.close()
            self._context.term()
            raise
        self.model_name = ready.model_name
        self.max_model_len = ready.max_model_len
        self.num_kv_blocks = ready.num_kv_blocks
        self.vocab_size = ready.vocab_size
        self.core_pid = ready.pid
        self._streams: dict[str, OutputStream] = {}
        self._calls: dict[int, concurrent.futures.Future] = {}
        self._call_ids = itertools.count()
        self._send_lock = threading.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self._stats_lock = threading.Lock()
        self._stats = EngineStats()
        self._samples: dict[str, list[float]] = {"compile_seconds": [], "mask_seconds": []}
        self._dead: str | None = None  # why the core can serve no more
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="corral-core-output",
                                        daemon=True)
        self._reader.start()
        # Before multiprocessing's own exit hook, which would wait for the core forever.
        ref = weakref.ref(self)
        self._at_exit = lambda: (client := ref()) is not None and client.shutdown()
        atexit.register(self._at_exit)

    # ---- public API ----------------------------------------------------------------------

    async def generate(self, prompt: str | list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's cumulative output as it grows; the last has finished=True.

        Raises ValueError for a request the engine refuses, `EngineDeadError` when the core
        is gone. Closing the iterator early aborts the request.
        """
        self._check_alive()
        request_id = request_id or uuid.uuid4().hex
        if isinstance(prompt, str):  # as AsyncLLMEngine: outputs then carry no prompt text
            prompt_ids = await asyncio.to_thread(encode_prompt, self.tokenizer, prompt)
        else:
            prompt_ids = list(prompt)
        sent_params = wire_params(params)
        if sent_params.structured_outputs is not None:
            await asyncio.to_thread(self.validate_structured, sent_params.structured_outputs)
        if request_id in self._streams:
            raise ParamError("request_id", f"{request_id!r} is already running")
        # Text is made here, not on the engine's loop, and stop strings are looked for here,
        # except where the core must see them: a sample of several to end alone, or an
        # output the structure closer may take tokens back from before they are shown.
        stops_here = bool(params.stop) and stop_strings_in_client(params)
        detokenize_here = params.detokenize and (not params.stop or stops_here)
        if detokenize_here:
            sent_params = sent_params.clone(detokenize=False, stop=None)
        assembler = RequestAssembler(request_id, None, prompt_ids, params,
                                     self.tokenizer if detokenize_here else None,
                                     check_stops=stops_here)
        stream = OutputStream(asyncio.get_running_loop(), assembler)
        self._streams[request_id] = stream
        finished = False
        try:
            self._check_alive()  # after registering: a death now fails the stream, see _fail
            self._send(AddRequest(request_id, prompt_ids, sent_params))
            while True:
                try:
                    item = await stream.next()  # outputs the loop fell behind on, merged
                except BaseException:
                    finished = True
                    raise
                if item.error is not None:
                    raise ValueError(item.error)
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if self._streams.get(request_id) is stream:
                del self._streams[request_id]
            if not finished or assembler.ended_here:  # the core goes on after a stop string
                self._abort_quietly(request_id)

    async def abort(self, request_id: str) -> None:
        self._abort_quietly(request_id)

    def validate_structured(self, spec: StructuredOutputsParams) -> None:
        """Raise ValueError now if the constraint would be refused."""
        self._call("validate", wire_structured(spec))

    def register_grammar(self, name: str, definition: Any, syntax: str = "lark") -> None:
        self._call("register", name, definition, syntax,
                   timeout=self.config.grammar_compile_timeout + _CALL_TIMEOUT)

    def unregister_grammar(self, name: str) -> None:
        self._call("unregister", name)

    def grammars(self) -> list[dict]:
        return list(self._call("grammars"))

    def stats(self) -> EngineStats:
        """The engine's stats as of its last step (the core sends them with its outputs)."""
        with self._stats_lock:
            return dataclasses.replace(self._stats)

    def grammar_stats(self) -> dict[str, list[float]]:
        """Samples since the last call: grammar compile seconds and mask-fill seconds."""
        with self._stats_lock:
            samples = self._samples
            self._samples = {"compile_seconds": [], "mask_seconds": []}
        return samples

    def is_healthy(self) -> bool:
        """Whether the core is up and serving."""
        return self._dead is None and not self._closed and self._reader.is_alive()

    def shutdown(self) -> None:
        """Stop the core process (it finishes its current step) and release everything."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        if self._dead is None:
            try:
                with self._send_lock:
                    self._core.input.send(self._encoder.encode(Shutdown()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self._core.stop(_SHUTDOWN_TIMEOUT)
        self._reader.join(5)
        self._fail(self._dead or "engine core shut down")
        self._core.close()
        self._context.term()

    # ---- sending ---------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(self._dead)
        if self._closed:
            raise EngineDeadError("engine core shut down")

    def _send(self, message: Any) -> None:
        with self._send_lock:
            self._check_alive()
            try:
                self._core.input.send(self._encoder.encode(message), zmq.NOBLOCK)
            except zmq.Again:
                raise EngineDeadError("engine core is not reachable") from None

    def _abort_quietly(self, request_id: str) -> None:
        if self._dead is None and not self._closed:
            try:
                self._send(AbortRequests([request_id]))
            except EngineDeadError:
                pass

    def _call(self, method: str, *args: Any, timeout: float = _CALL_TIMEOUT) -> Any:
        """Ask the core's grammar threads; their error is raised here."""
        self._check_alive()
        call_id = next(self._call_ids)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls[call_id] = future
        try:
            self._check_alive()
            self._send(UtilityCall(call_id, method, list(args)))
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise RuntimeError(f"engine core did not answer {method} in {timeout:.0f} s") \
                from None
        finally:
            self._calls.pop(call_id, None)

    # ---- the reader thread -----------------------------------------------------------------

    def _read(self) -> None:
        decoder = client_decoder()
        output, sentinel = self._core.output, self._core.process.sentinel
        poller = zmq.Poller()
        poller.register(output, zmq.POLLIN)
        poller.register(sentinel, zmq.POLLIN)
        while not self._closed:
            events = dict(poller.poll(_READER_POLL_MS))
            if output in events or sentinel in events:
                self._drain(output, decoder)
            if sentinel in events and not self._closed:
                self._core.process.join(1)
                self._dead = f"engine core died ({self._core.describe_exit()})"
                logger.error("%s; failing every live request", self._dead)
                self._fail(self._dead)
                return

    def _drain(self, output: zmq.Socket, decoder: msgspec.msgpack.Decoder) -> None:
        while True:
            try:
                frame = output.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                message = decoder.decode(frame.buffer)
            except msgspec.DecodeError as e:
                logger.error("dropped a message from the engine core: %s", e)
                continue
            if isinstance(message, StepOutputs):
                self._deliver(message)
            elif isinstance(message, Reply):
                future = self._calls.get(message.call_id)
                if future is not None:
                    error = message.error.to_exception() if message.error is not None else None
                    _settle(future, message.value, error)

    def _deliver(self, message: StepOutputs) -> None:
        with self._stats_lock:
            if message.stats is not None:
                self._stats = message.stats
            self._samples["compile_seconds"].extend(message.compile_seconds)
            self._samples["mask_seconds"].extend(message.mask_seconds)
        batches: dict[asyncio.AbstractEventLoop, list[tuple[OutputStream, Any]]] = {}
        for delta in message.deltas:
            stream = self._streams.get(delta.request_id)
            if stream is not None:  # applied on the stream's loop, when it is consumed
                batches.setdefault(stream.loop, []).append((stream, delta))
        _post(batches)

    def _fail(self, reason: str) -> None:
        """Fail every live stream and pending call with `EngineDeadError(reason)`."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[OutputStream, Any]]] = {}
        for stream in list(self._streams.values()):
            batches.setdefault(stream.loop, []).append((stream, EngineDeadError(reason)))
        _post(batches)
        for future in list(self._calls.values()):
            _settle(future, None, EngineDeadError(reason))


def _post(batches: dict[asyncio.AbstractEventLoop, list[tuple[OutputStream, Any]]]) -> None:
    """Hand deltas (or errors) to their streams: one wake-up per event loop."""
    for loop, items in batches.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


def _put_all(items: list[tuple[OutputStream, Any]]) -> None:
    for stream, item in items:
        if isinstance(item, BaseException):
            stream.fail(item)
        else:
            stream.push(item)


def _settle(future: concurrent.futures.Future, value: Any, error: BaseException | None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:  # already failed (the core died)
        pass


def stop_strings_in_client(params: SamplingParams) -> bool:
    """Whether the client can look for `params.stop` itself, exactly as the core would: one
    completion (the core ends one sample of several alone), special tokens skipped (the
    end-of-sequence token then adds no text a stop string could end in), and no structure
    closer (it may take back tokens the client has not been shown)."""
    closer = params.structured_outputs is not None and params.close_structures
    return params.n == 1 and params.skip_special_tokens and not closer
