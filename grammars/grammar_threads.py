"""The process-wide native thread pools for batched grammar work (llguidance's executor and
xgrammar's batch matcher), sized by `grammar_threads()`."""

from __future__ import annotations

import os
import threading

import llguidance
import xgrammar

_executor: llguidance.LLExecutor | None = None
_xgrammar_batch: xgrammar.BatchGrammarMatcher | None = None
_executor_lock = threading.Lock()
_CORES = os.cpu_count() or 1  # read once: os.cpu_count() reads a file on every call


def _num_threads() -> int:
    return grammar_threads()


def grammar_threads() -> int:
    """Threads for batched grammar work: CORRAL_MASK_THREADS, else up to 8 where there are
    4 cores or more, else 1. With 1, batches run row by row on the calling thread: on a
    2-core machine a pool's spinning threads would slow the model's own threads more
    than they save."""
    default = min(8, _CORES) if _CORES >= 4 else 1
    return max(1, int(os.environ.get("CORRAL_MASK_THREADS", default)))


def mask_executor() -> llguidance.LLExecutor:
    """The process-wide llguidance executor (threads: CORRAL_MASK_THREADS or up to 8)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = llguidance.LLExecutor(num_threads=_num_threads())
        return _executor


def xgrammar_batch() -> xgrammar.BatchGrammarMatcher:
    """The process-wide xgrammar batch filler (threads as for `mask_executor`)."""
    global _xgrammar_batch
    with _executor_lock:
        if _xgrammar_batch is None:
            _xgrammar_batch = xgrammar.BatchGrammarMatcher(max_threads=_num_threads())
        return _xgrammar_batch
