"""Starting, awaiting and stopping an engine-core process and the sockets to it.

The client binds both sockets (ipc:// in a private temporary folder, or tcp on localhost
where the folder's path is too long for a socket name) and the core connects to them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time

import msgspec
import zmq

from .config import EngineConfig
from .core_messages import Ready, StartupFailed
from .core_process import run_engine_core
from .engine_errors import EngineDeadError

logger = logging.getLogger(__name__)

_MAX_IPC_PATH = 100  # socket names longer than ~107 bytes are refused by the OS


class CoreProcess:
    """One engine-core process; `input` sends to it, `output` receives from it."""

    def __init__(self, config: EngineConfig, context: zmq.Context) -> None:
        self._dir = tempfile.mkdtemp(prefix="corral-core-")  # mode 0700: this user only
        self.input = context.socket(zmq.PUSH)
        self.input.setsockopt(zmq.SNDHWM, 0)
        self.input.setsockopt(zmq.LINGER, 0)
        self.output = context.socket(zmq.PULL)
        self.output.setsockopt(zmq.RCVHWM, 0)
        self.output.setsockopt(zmq.LINGER, 0)
        input_address = self._bind(self.input, "input")
        output_address = self._bind(self.output, "output")
        spawn = multiprocessing.get_context("spawn")
        level = logging.getLogger("corral").getEffectiveLevel()
        self.process = spawn.Process(
            target=run_engine_core, name="corral-engine-core", daemon=False,
            args=(config, input_address, output_address, os.getpid(), level))
        self.process.start()

    def _bind(self, socket: zmq.Socket, name: str) -> str:
        path = os.path.join(self._dir, name)
        if len(path) <= _MAX_IPC_PATH:
            socket.bind(f"ipc://{path}")
            return f"ipc://{path}"
        port = socket.bind_to_random_port("tcp://127.0.0.1")
        return f"tcp://127.0.0.1:{port}"

    def wait_ready(self, decoder: msgspec.msgpack.Decoder, timeout: float | None) -> Ready:
        """The core's `Ready`; RuntimeError if it failed to start, died or took too long."""
        poller = zmq.Poller()
        poller.register(self.output, zmq.POLLIN)
        poller.register(self.process.sentinel, zmq.POLLIN)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            wait_ms = int(1000 * min(left, 1.0))
            events = dict(poller.poll(wait_ms))
            if self.output in events:
                message = decoder.decode(self.output.recv())
                if isinstance(message, Ready):
                    return message
                if isinstance(message, StartupFailed):
                    error = message.error.to_exception()
                    if isinstance(error, ValueError):  # a setting the engine refused
                        raise error
                    raise RuntimeError(f"engine core failed to start: {error}")
                continue
            if self.process.sentinel in events:
                self.process.join(1)
                raise EngineDeadError(f"engine core exited while starting "
                                      f"({self.describe_exit()})")
            if deadline is not None and time.monotonic() >= deadline:
                raise RuntimeError(f"engine core did not start in {timeout:.0f} s")

    def describe_exit(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def stop(self, timeout: float) -> None:
        """Wait up to `timeout` for the process to leave; terminate it, then kill it."""
        process = self.process
        process.join(timeout)
        for escalate in (process.terminate, process.kill):
            if not process.is_alive():
                break
            logger.warning("engine core still running; %s", escalate.__name__)
            escalate()
            process.join(5)

    def close(self) -> None:
        """Close the sockets and remove the socket folder (the process must be gone)."""
        self.input.close(linger=0)
        self.output.close(linger=0)
        shutil.rmtree(self._dir, ignore_errors=True)
