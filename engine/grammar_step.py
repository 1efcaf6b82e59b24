"""The grammar side of an engine step, batched and off the critical path.

Per step the engine (1) hands the grammar matchers the tokens just sampled, all at once
(`accept`: one native call per backend, parallel, without the GIL), and (2) has the masks
of the next sampling rows filled into a pinned buffer (`start_fill` / `wait_fill`). With
`overlap` the fill runs on a worker thread, so the engine thread detokenizes, checks stop
conditions, schedules and launches the forward pass while the masks are computed; only
the sampler waits for them. The matchers must not be touched between `start_fill` and
`wait_fill`.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .logits_process import allocate_bitmask

logger = logging.getLogger(__name__)


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
        self._failed: list = []
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
        """Begin filling `jobs` into `self.bitmask` (on the worker thread with `overlap`)."""
        if jobs.num_rows > self.bitmask.shape[0]:
            self._grow(jobs.num_rows)
        self._failed = []
        if not jobs.matchers:
            return
        if not self.overlap:
            self._fill(jobs)
            return
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="corral-masks")
        self._pending = self._worker.submit(self._fill, jobs)

    def wait_fill(self) -> list:
        """Wait for the fill; returns the matchers that failed to fill their rows (which
        allow nothing: their requests must fail)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
        return self._failed

    def _fill(self, jobs: MaskJobs) -> None:
        from corral.grammars import fill_bitmasks_with_drafts

        start = time.perf_counter()
        bitmask = self.bitmask[: jobs.num_rows]
        try:
            fill_bitmasks_with_drafts(jobs.matchers, jobs.drafts, bitmask, jobs.first_rows)
        except Exception:  # noqa: BLE001 - find the matcher at fault, fail only its request
            logger.exception("batched grammar mask fill failed; filling one by one")
            self._failed = self._fill_each(jobs, bitmask)
        self.stats.mask_fill_seconds.append((time.perf_counter() - start) / len(jobs.matchers))

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
