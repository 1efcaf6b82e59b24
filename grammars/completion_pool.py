"""Completion searches in worker processes, beside the engine's loop instead of on it.

A search for the shortest way out of a grammar (`completion.py`) is half Python, half native
matcher calls: on a thread it would hold the GIL the engine thread needs, so near the token
limit of a large batch the searches of one step cost the engine several milliseconds. A
worker process runs them in parallel instead. Each worker compiles the grammars it is asked
about (cached by their canonical text), replays the sequence's accepted tokens on a fresh
matcher and searches from there with the same candidate vocabulary and node budget as the
engine thread would: the answer is the same, only computed elsewhere.

Each grammar goes to one worker (by a hash of its text): a grammar's automaton grows its
lexer states lazily as it is used, so a grammar searched by one worker stays warm there.
Workers are spawned (the engine process may hold a CUDA context) and built in the
background; `ready` says when every worker has answered its first call. A worker that
dies breaks the pool: `submit` then raises `BrokenProcessPool` and the caller searches
inline.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

__all__ = ["CompletionSearchPool", "default_num_workers"]

MAX_CACHED_GRAMMARS = 256  # compiled grammars kept per worker (least recently used out)
PARENT_POLL_SECONDS = 1.0  # how often a worker checks that the engine's process lives


def default_num_workers(on_gpu: bool) -> int:
    """Workers a GPU engine gets by default: a quarter of the host's cores, 1 to 4. On the
    CPU the model's own threads need the cores, so searches stay on the engine thread."""
    if not on_gpu:
        return 0
    return max(1, min(4, (os.cpu_count() or 1) // 4))


class CompletionSearchPool:
    """`num_workers` processes answering `shortest_completion` calls for one tokenizer."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int],
                 num_workers: int, json_whitespace: str | None = None) -> None:
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive integer (got {num_workers!r})")
        self.num_workers = num_workers
        context = multiprocessing.get_context("spawn")
        args = (tokenizer, vocab_size, list(eos_token_ids), json_whitespace, os.getpid())
        self._workers = [ProcessPoolExecutor(1, mp_context=context, initializer=_init_worker,
                                             initargs=args) for _ in range(num_workers)]
        # One warm-up call per worker: each builds its tokenizer tables and candidate
        # vocabulary before the first real search comes.
        self._warm = [worker.submit(_warm_up) for worker in self._workers]

    @property
    def ready(self) -> bool:
        """Whether the workers are built (a failed start never becomes ready)."""
        return all(f.done() and f.exception() is None for f in self._warm)

    def submit(self, kind: str, text: str, backend: str, tokens: list[int], max_tokens: int,
               node_budget: int) -> Future:
        """Search from the state after `tokens` of the grammar (`kind`, `text`, `backend`):
        a future of the completion (token ids) or None, as `shortest_completion` returns."""
        worker = self._workers[zlib.crc32(text.encode()) % self.num_workers]
        return worker.submit(_search, kind, text, backend, tokens, max_tokens, node_budget)

    def shutdown(self) -> None:
        """Cancel the queued searches and wait for the workers to exit (a running search
        ends within its node budget). Not waiting would leave the stop to the interpreter's
        exit, which in a spawned process (a benchmark phase) joins the workers before they
        are told to stop: a hang."""
        for worker in self._workers:
            worker.shutdown(wait=True, cancel_futures=True)


# ---- in the worker ----------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(tokenizer: Any, vocab_size: int, eos_token_ids: list[int],
                 json_whitespace: str | None, parent_pid: int) -> None:
    import torch

    _leave_with(parent_pid)

    from corral.grammars.compiler import GrammarCompiler

    torch.set_num_threads(1)  # searches are single-threaded: no OpenMP team to keep

    _worker["compiler"] = GrammarCompiler(tokenizer, vocab_size, eos_token_ids,
                                          max_workers=1, json_whitespace=json_whitespace)
    _worker["factories"] = OrderedDict()


def _leave_with(parent_pid: int) -> None:
    """Exit when the engine's process is gone (this worker is re-parented): a process
    killed outright never shuts its pool down, and its workers would wait forever."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="corral-search-parent-watch", daemon=True).start()


def _warm_up() -> int:
    _worker["compiler"].completion_vocab()
    return os.getpid()


def _search(kind: str, text: str, backend: str, tokens: list[int], max_tokens: int,
            node_budget: int) -> list[int] | None:
    from corral.grammars.completion import shortest_completion
    from corral.grammars.spec import GrammarSpec

    compiler = _worker["compiler"]
    factories: OrderedDict = _worker["factories"]
    key = (kind, text, backend)
    factory = factories.get(key)
    if factory is None:
        factory = compiler.matcher_factory(GrammarSpec(kind, text, backend))
        factories[key] = factory
        while len(factories) > MAX_CACHED_GRAMMARS:
            factories.popitem(last=False)
    else:
        factories.move_to_end(key)
    matcher = factory()
    for token in tokens:
        if not matcher.accept_token(token):
            return None  # not the engine's state: no answer rather than a wrong one
    return shortest_completion(matcher, max_tokens, vocab=compiler.completion_vocab(),
                               node_budget=node_budget)
