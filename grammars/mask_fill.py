"""One batch of grammar masks in three parts, so that only native code runs off the caller's
thread.

`MaskFill(...)` (the caller's thread) sorts the rows by backend, serves rows from the mask
cache and notes rows that share a state; `compute()` (any thread) makes the native batched
calls, which run in parallel threads without the GIL; `finish()` (the caller's thread
again) copies shared rows and feeds the mask cache. An engine that computes on a worker
thread while its own thread appends tokens thus never has the two contend for the GIL.

Rows: matcher `i` fills `first_rows[i]`, and with drafts `first_rows[i] + 1 ..
first_rows[i] + len(drafts[i])` (its mask after each draft token). llguidance matchers with
drafts are computed on copies (llguidance keeps the last mask it computed across a
rollback: masks along drafts that are then rejected could come back stale); other matchers
with drafts accept them, fill and roll back, in `compute()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from corral.grammars.grammar_threads import grammar_threads, mask_executor, xgrammar_batch
from corral.grammars.llguidance_backend import LLGuidanceMatcher
from corral.grammars.matcher import Matcher
from corral.grammars.param_error import ParamError
from corral.grammars.xgrammar_matcher import XGrammarMatcher


class MaskFill:
    """The plan of one batch of masks into `bitmask` (int32 `[rows, ceil(vocab/32)]`, CPU,
    contiguous); the matchers must not change until `finish()`."""

    def __init__(self, matchers: Sequence[Matcher], bitmask: torch.Tensor,
                 first_rows: Sequence[int], drafts: Sequence[list[int]] | None = None) -> None:
        if bitmask.dtype != torch.int32 or bitmask.dim() != 2 or bitmask.device.type != "cpu":
            raise ParamError("bitmask", "must be a 2-D int32 CPU tensor")
        if not bitmask.is_contiguous():
            raise ParamError("bitmask", "must be contiguous")
        name = "rows" if drafts is None else "first_rows"  # the caller's parameter
        rows = [int(r) for r in first_rows]
        if len(rows) != len(matchers):
            raise ParamError(name, f"{len(rows)} rows for {len(matchers)} matchers")
        drafts = drafts if drafts is not None else [()] * len(matchers)
        spans = [(r, r + len(d)) for r, d in zip(rows, drafts, strict=True)]
        if any(lo < 0 or hi >= bitmask.shape[0] for lo, hi in spans):
            raise ParamError(name, f"every row (and one per draft after it) must be a row "
                             f"of the bitmask (0..{bitmask.shape[0] - 1})")
        if len({r for lo, hi in spans for r in range(lo, hi + 1)}) != sum(
                hi - lo + 1 for lo, hi in spans):
            raise ParamError(name, "must be distinct rows of the bitmask")
        self.bitmask = bitmask
        self.rows = rows_np = bitmask.numpy()  # the same memory: a row is one numpy copy
        self.width_bytes = bitmask.shape[1] * 4
        self.llg: list[tuple] = []  # (llguidance matcher, row)
        self.llg_drafts: list[tuple] = []  # (llguidance copy, first row, draft tokens)
        self.xgr_matchers: list = []
        self.xgr_rows: list[int] = []
        self.others: list[tuple[Matcher, int, list[int]]] = []  # filled one by one
        self.twins: list[tuple[int, int]] = []  # (row, row computing the same state)
        self.cached: list[tuple[LLGuidanceMatcher, int]] = []  # computed rows to remember
        first_row_at: dict[int, int] = {}  # cache node -> the row computing its mask
        stores: dict[int, tuple] = {}  # id(store) -> (store, nodes whose masks were copied)
        for matcher, row, tokens in zip(matchers, rows, drafts, strict=True):
            is_llg = type(matcher) is LLGuidanceMatcher and not matcher.inner.is_error()
            if tokens:
                if is_llg:
                    self.llg_drafts.append((matcher.inner.deep_copy(), row,
                                            [int(t) for t in tokens]))
                else:
                    self.others.append((matcher, row, list(tokens)))
            elif is_llg:
                cache = matcher.mask_cache
                node = matcher.cache_node
                if node is not None:
                    mask = node.mask  # read once: the store may drop it meanwhile
                    if mask is not None:
                        rows_np[row] = mask
                        hits = stores.get(id(cache.store))
                        if hits is None:
                            hits = stores[id(cache.store)] = (cache.store, [])
                        hits[1].append(node)
                        continue
                    if id(node) in first_row_at:  # the same state twice in this batch
                        self.twins.append((row, first_row_at[id(node)]))
                        cache.shared()
                        continue
                    first_row_at[id(node)] = row
                    self.cached.append((matcher, row))
                self.llg.append((matcher.inner, row))
            elif isinstance(matcher, XGrammarMatcher) and matcher.is_live:
                self.xgr_matchers.append(matcher.inner)
                self.xgr_rows.append(row)
            else:
                self.others.append((matcher, row, []))
        for store, nodes in stores.values():
            store.touch_all(nodes)

    def compute(self) -> None:
        """The native batched calls (and the rows of other backends); any thread."""
        bitmask = self.bitmask
        if self.llg_drafts:
            mask_executor().unsafe_compute_mask_ptr_with_draft_token(
                self.llg_drafts, bitmask.data_ptr(), self.width_bytes, bitmask.shape[0])
        if len(self.llg) == 1 or (self.llg and grammar_threads() == 1):
            for inner, row in self.llg:
                inner.unsafe_compute_mask_ptr(bitmask[row].data_ptr(), self.width_bytes)
        elif self.llg:
            mask_executor().unsafe_compute_mask_ptr(self.llg, bitmask.data_ptr(),
                                                    self.width_bytes, bitmask.shape[0])
        if len(self.xgr_matchers) == 1:
            self.xgr_matchers[0].fill_next_token_bitmask(bitmask, self.xgr_rows[0])
        elif self.xgr_matchers:
            xgrammar_batch().batch_fill_next_token_bitmask(self.xgr_matchers, bitmask,
                                                           self.xgr_rows)
        for matcher, row, tokens in self.others:
            _fill_along(matcher, tokens, bitmask, row)

    def finish(self) -> None:
        """Copy rows of shared states and feed the mask cache; the caller's thread."""
        rows = self.rows
        for row, source in self.twins:
            rows[row] = rows[source]
        for matcher, row in self.cached:
            matcher.mask_cache.filled(matcher.cache_node, rows[row])


def _fill_along(matcher: Matcher, tokens: list[int], bitmask: torch.Tensor, row: int) -> None:
    """Fill `row` from `matcher`, then the next rows after each draft token (rolled back)."""
    accepted = 0
    for i in range(len(tokens) + 1):
        matcher.fill_bitmask(bitmask, row + i)
        if i == len(tokens):
            break
        if not matcher.accept_token(tokens[i]):
            bitmask[row + i + 1 : row + len(tokens) + 1].zero_()
            break
        accepted += 1
    if accepted:
        matcher.rollback(accepted)
