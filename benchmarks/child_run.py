"""Run one function in a fresh spawned process and hand back its result.

Whatever the function allocated (GPU memory, CUDA graphs, tensor-parallel workers, process
groups) is gone when it returns, so the next phase of a benchmark starts on a free device.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

CHILD_EXIT_SECONDS = 120.0  # how long a child that has answered may take to exit


def _call(conn: Connection, fn: Callable[..., Any], args: tuple) -> None:
    try:
        result = fn(*args)
    except BaseException:  # noqa: BLE001 - sent to the parent, which raises it
        conn.send((False, traceback.format_exc()))
        raise
    conn.send((True, result))
    conn.close()


def run_in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a spawned, non-daemonic process (it may start its own workers);
    `fn`, its arguments and its result must pickle. A failure raises RuntimeError with the
    child's traceback."""
    context = mp.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    proc = context.Process(target=_call, args=(sender, fn, args))
    proc.start()
    sender.close()
    try:
        ok, value = receiver.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"{fn.__name__} died (exit code {proc.exitcode})") from None
    proc.join(CHILD_EXIT_SECONDS)
    if proc.exitcode is None:  # the result is in: a child stuck on its way out is ended
        print(f"{fn.__name__}'s process did not exit within {CHILD_EXIT_SECONDS:.0f} s; "
              "killed", flush=True)
        proc.kill()
        proc.join()
    if not ok:
        raise RuntimeError(f"{fn.__name__} failed in its process:\n{value}")
    return value
