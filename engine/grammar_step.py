"""The grammar side of an engine step, batched and off the critical path.

Per step the engine (1) hands the grammar matchers the tokens just sampled, all at once
(`accept`: one native call per backend, parallel, without the GIL), and (2) has the masks
of the next sampling rows filled into a pinned buffer (`start_fill` / `wait_fill`). With
`overlap` the fill's native part runs on a worker thread (the engine thread plans it and
finishes it: see `corral.grammars.mask_fill`), so the engine thread detokenizes and checks
stop conditions while the masks are computed, without the two contending for the GIL; only
the sampler waits for them. The matchers must not be touched between `start_fill` and
`wait_fill`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .logits_process import allocate_bitmask

logger = logging.getLogger(__name__)

_START_TIMEOUT_S = 1.0  # a worker that does not start by then is waited for in wait_fill


@dataclass
class MaskJobs:
    """The masks one sampling step needs: matcher i fills rows `first_rows[i]` to
    `first_rows[i] + len(drafts[i])` of the bitmask (its mask now, and after each draft)."""

    matchers: list = field(default_factory=list)
    drafts: list[list[int]] = field(default_factory=list)
    first_rows: list[int] = field(default_factory=list)
    num_rows: int = 0

    def add(self, matcher, drafts: list[int]) -> None:
        self.matchers.append(matcher)
        self.drafts.append(drafts)
        self.first_rows.append(self.num_rows)
        self.num_rows += 1 + len(drafts)


@dataclass
class GrammarStats:
    """Host seconds per sequence and step, drained by the engine's users (metrics)."""

    mask_fill_seconds: list[float] = field(default_factory=list)
    accept_seconds: list[float] = field(default_factory=list)


class GrammarStepper:
    """Owns the mask buffer `[max_rows, ceil(vocab/32)]` and the fill worker."""

    def __init__(self, vocab_size: int, max_rows: int, pin_memory: bool, overlap: bool) -> None:
        self.bitmask = allocate_bitmask(max_rows, vocab_size)
        if pin_memory:
            self.bitmask = self.bitmask.pin_memory()
        self.overlap = overlap
        self._worker: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._jobs: MaskJobs | None = None
        self._plan = None  # the MaskFill of the fill in progress
        self._host_seconds = 0.0  # this thread's share of the fill in progress
        self._failed: list = []
        self._started = threading.Event()  # set by the worker as it begins a fill
        self.stats = GrammarStats()

    def _grow(self, num_rows: int) -> None:
        """A larger buffer (more draft rows than planned for); no fill may be running."""
        bitmask = allocate_bitmask(max(num_rows, 2 * self.bitmask.shape[0]),
                                   32 * self.bitmask.shape[1])
        self.bitmask = bitmask.pin_memory() if self.bitmask.is_pinned() else bitmask

    def accept(self, matchers: list, token_lists: list[list[int]]) -> list[bool]:
        """Advance matcher i past `token_lists[i]`; per matcher, whether all were allowed.

        One batched call per token position (a list longer than one holds accepted drafts).
        A list is cut, in place, right after a token that completes its grammar: plain
        decoding would have stopped there.
        """
        from corral.grammars import accept_tokens

        start = time.perf_counter()
        firsts = [tokens[0] for tokens in token_lists if len(tokens) == 1]
        if len(firsts) == len(token_lists):  # one token each (no drafts): one batched call
            ok = accept_tokens(matchers, firsts)
            if matchers:
                self.stats.accept_seconds.append((time.perf_counter() - start) / len(matchers))
            return ok
        ok = [True] * len(matchers)
        depth = 0
        while True:
            rows = [i for i, tokens in enumerate(token_lists) if len(tokens) > depth and ok[i]]
            if not rows:
                break
            results = accept_tokens([matchers[i] for i in rows],
                                    [token_lists[i][depth] for i in rows])
            for i, accepted in zip(rows, results, strict=True):
                ok[i] = accepted
                tokens = token_lists[i]
                if accepted and len(tokens) > depth + 1 and matchers[i].is_terminated():
                    del tokens[depth + 1:]
            depth += 1
        if matchers:
            self.stats.accept_seconds.append((time.perf_counter() - start) / len(matchers))
        return ok

    def start_fill(self, jobs: MaskJobs) -> None:
        """Begin filling `jobs` into `self.bitmask`. This thread plans the fill (mask-cache
        lookups, backend groups); with `overlap` only its native part, which holds no GIL,
        runs on the worker, so this thread's own work never waits for the GIL there."""
        from corral.grammars.mask_fill import MaskFill

        if jobs.num_rows > self.bitmask.shape[0]:
            self._grow(jobs.num_rows)
        self._failed = []
        self._jobs = jobs
        self._plan = None
        if not jobs.matchers:
            return
        start = time.perf_counter()
        try:
            self._plan = MaskFill(jobs.matchers, self.bitmask[: jobs.num_rows],
                                  jobs.first_rows, jobs.drafts)
        except Exception:  # noqa: BLE001 - found and failed one by one in wait_fill
            logger.exception("planning the grammar mask fill failed")
            return
        self._host_seconds = time.perf_counter() - start
        if not self.overlap:
            self._pending = _done_future(lambda: _timed(self._plan.compute))
            return
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="corral-masks")
        # Wait until the worker runs: it needs the GIL to enter the native fill, and this
        # thread's pure-Python work next (appending, detokenizing) would hold the GIL until
        # the interpreter's switch interval (5 ms) forced it out, so without the handshake
        # the fill started only once this thread waited for it (no overlap at all).
        self._started.clear()
        self._pending = self._worker.submit(_timed, self._plan.compute, self._started)
        self._started.wait(_START_TIMEOUT_S)

    def wait_fill(self) -> list:
        """Wait for the fill; returns the matchers that failed to fill their rows (which
        allow nothing: their requests must fail)."""
        jobs, self._jobs = self._jobs, None
        pending, self._pending = self._pending, None
        plan, self._plan = self._plan, None
        if jobs is None or not jobs.matchers:
            return self._failed
        try:
            if plan is None or pending is None:
                raise RuntimeError("no plan")
            compute_seconds = pending.result()
            start = time.perf_counter()
            plan.finish()
            seconds = self._host_seconds + compute_seconds + time.perf_counter() - start
            self.stats.mask_fill_seconds.append(seconds / len(jobs.matchers))
        except Exception:  # noqa: BLE001 - find the matcher at fault, fail only its request
            logger.exception("batched grammar mask fill failed; filling one by one")
            self._failed = self._fill_each(jobs, self.bitmask[: jobs.num_rows])
        return self._failed

    @staticmethod
    def _fill_each(jobs: MaskJobs, bitmask: torch.Tensor) -> list:
        from corral.grammars import fill_bitmasks_with_drafts

        failed = []
        for matcher, drafts, row in zip(jobs.matchers, jobs.drafts, jobs.first_rows,
                                        strict=True):
            try:
                fill_bitmasks_with_drafts([matcher], [drafts], bitmask, [row])
            except Exception:  # noqa: BLE001
                bitmask[row : row + 1 + len(drafts)].zero_()
                failed.append(matcher)
        return failed

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None


def _timed(work, started: threading.Event | None = None) -> float:
    """Run `work()` (after setting `started`); its seconds."""
    start = time.perf_counter()
    if started is not None:
        started.set()
    work()
    return time.perf_counter() - start


def _done_future(work) -> Future:
    """A future holding `work()`'s outcome, run now on this thread."""
    future: Future = Future()
    try:
        future.set_result(work())
    except Exception as e:  # noqa: BLE001 - re-raised by result()
        future.set_exception(e)
    return future
