"""Filling the masks of a batch of matchers at once.

llguidance matchers are filled by one `LLExecutor` call and xgrammar matchers by one
`BatchGrammarMatcher` call; both compute their rows in parallel native threads without the
GIL, writing the same layout (bit `j` of word `i` of a row = token `32*i + j`). Other
matchers fill their own rows.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import llguidance
import torch
import xgrammar

from corral.grammars.llguidance_backend import LLGuidanceMatcher
from corral.grammars.matcher import Matcher
from corral.grammars.xgrammar_matcher import XGrammarMatcher

_executor: llguidance.LLExecutor | None = None
_xgrammar_batch: xgrammar.BatchGrammarMatcher | None = None
_executor_lock = threading.Lock()


def _num_threads() -> int:
    return grammar_threads()


def grammar_threads() -> int:
    """Threads for batched grammar work: CORRAL_MASK_THREADS, else up to 8 where there are
    4 cores or more, else 1. With 1, batches run row by row on the calling thread: on a
    2-core machine a pool's spinning threads would slow the model's own threads more
    than they save."""
    cores = os.cpu_count() or 1
    default = min(8, cores) if cores >= 4 else 1
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
    cached: list[tuple[LLGuidanceMatcher, int]] = []  # filled rows a mask cache may keep
    first_row_at: dict[int, int] = {}  # cache node -> the row computing its mask
    copies: list[tuple[int, int]] = []  # (row, row to copy it from) for shared states
    xgr_matchers, xgr_rows = [], []
    for matcher, row in zip(matchers, rows, strict=True):
        if isinstance(matcher, LLGuidanceMatcher) and not matcher.is_error():
            cache, node = matcher.mask_cache, matcher.cache_node
            if cache is not None and node is not None:
                if cache.lookup(node, bitmask[row]):
                    continue
                if id(node) in first_row_at:  # the same state twice in this batch
                    copies.append((row, first_row_at[id(node)]))
                    cache.shared()
                    continue
                first_row_at[id(node)] = row
                cached.append((matcher, row))
            batch.append((matcher.inner, row))
        elif isinstance(matcher, XGrammarMatcher) and matcher.is_live:
            xgr_matchers.append(matcher.inner)
            xgr_rows.append(row)
        else:
            matcher.fill_bitmask(bitmask, row)
    if len(xgr_matchers) == 1:
        xgr_matchers[0].fill_next_token_bitmask(bitmask, xgr_rows[0])
    elif xgr_matchers:
        xgrammar_batch().batch_fill_next_token_bitmask(xgr_matchers, bitmask, xgr_rows)
    if len(batch) == 1 or (batch and grammar_threads() == 1):
        width_bytes = bitmask.shape[1] * 4
        for inner, row in batch:
            inner.unsafe_compute_mask_ptr(bitmask[row].data_ptr(), width_bytes)
    elif batch:
        width_bytes = bitmask.shape[1] * 4
        mask_executor().unsafe_compute_mask_ptr(batch, bitmask.data_ptr(), width_bytes,
                                                bitmask.shape[0])
    for row, source in copies:
        bitmask[row].copy_(bitmask[source])
    for matcher, row in cached:
        matcher.mask_cache.filled(matcher.cache_node, bitmask[row])
