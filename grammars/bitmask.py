"""Filling the masks of a batch of matchers at once.

llguidance matchers are filled by one `LLExecutor` call that computes the rows in parallel
native threads without the GIL; other matchers fill their own rows.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import llguidance
import torch

from corral.grammars.llguidance_backend import LLGuidanceMatcher
from corral.grammars.matcher import Matcher

_executor: llguidance.LLExecutor | None = None
_executor_lock = threading.Lock()


def mask_executor() -> llguidance.LLExecutor:
    """The process-wide llguidance executor (threads: CORRAL_MASK_THREADS or up to 8)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            threads = int(os.environ.get("CORRAL_MASK_THREADS", min(8, os.cpu_count() or 1)))
            _executor = llguidance.LLExecutor(num_threads=max(1, threads))
        return _executor


def fill_bitmasks(matchers: Sequence[Matcher], bitmask: torch.Tensor,
                  rows: Sequence[int] | None = None) -> None:
    """Fill `bitmask[rows[i]]` from `matchers[i]` for every i.

    `bitmask`: int32 `[num_rows, ceil(vocab/32)]`, CPU, contiguous (preallocated by the
    caller); `rows` defaults to 0..len(matchers)-1 and must be distinct.
    """
    if bitmask.dtype != torch.int32 or bitmask.dim() != 2 or bitmask.device.type != "cpu":
        raise ValueError("bitmask: must be a 2-D int32 CPU tensor")
    if not bitmask.is_contiguous():
        raise ValueError("bitmask: must be contiguous")
    rows = list(range(len(matchers))) if rows is None else [int(r) for r in rows]
    if len(rows) != len(matchers):
        raise ValueError(f"rows: {len(rows)} rows for {len(matchers)} matchers")
    if any(not 0 <= r < bitmask.shape[0] for r in rows) or len(set(rows)) != len(rows):
        raise ValueError(f"rows: must be distinct rows of the bitmask (0..{bitmask.shape[0] - 1})")
    batch = []
    for matcher, row in zip(matchers, rows, strict=True):
        if isinstance(matcher, LLGuidanceMatcher) and not matcher.is_error():
            batch.append((matcher.inner, row))
        else:
            matcher.fill_bitmask(bitmask, row)
    if len(batch) == 1:
        matchers_row = batch[0]
        target = bitmask[matchers_row[1]]
        matchers_row[0].unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * 4)
    elif batch:
        width_bytes = bitmask.shape[1] * 4
        mask_executor().unsafe_compute_mask_ptr(batch, bitmask.data_ptr(), width_bytes,
                                                bitmask.shape[0])
