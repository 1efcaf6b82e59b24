"""Masks for speculative verification: each matcher's mask now and after each draft token.

A sequence verifying `k` drafts samples `k + 1` rows; row `r` must be masked by the
grammar's state after the first `r` drafts. llguidance matchers get all their rows from one
`LLExecutor` call (parallel native threads, no GIL), computed on copies of the matchers;
other matchers accept the drafts one by one, fill, and roll back. Matchers are left in the
state they were in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from corral.grammars.bitmask import fill_bitmasks, mask_executor
from corral.grammars.llguidance_backend import LLGuidanceMatcher
from corral.grammars.matcher import Matcher


def fill_bitmasks_with_drafts(matchers: Sequence[Matcher], drafts: Sequence[list[int]],
                              bitmask: torch.Tensor, first_rows: Sequence[int]) -> None:
    """Fill rows `first_rows[i] .. first_rows[i] + len(drafts[i])` for matcher `i`.

    `bitmask`: int32 `[num_rows, ceil(vocab/32)]`, CPU, contiguous. Every draft list must be
    accepted by its grammar in full (see `Matcher.validate_tokens`); it may end with an
    end-of-sequence token, after which the row's content is unspecified (nothing is sampled
    from it)."""
    if not any(drafts):
        fill_bitmasks(matchers, bitmask, first_rows)
        return
    if bitmask.dtype != torch.int32 or bitmask.dim() != 2 or not bitmask.is_contiguous():
        raise ValueError("bitmask: must be a contiguous 2-D int32 CPU tensor")
    with_drafts, plain_matchers, plain_rows = [], [], []
    for matcher, tokens, row in zip(matchers, drafts, first_rows, strict=True):
        if row + len(tokens) >= bitmask.shape[0] or row < 0:
            raise ValueError(f"first_rows: row {row} + {len(tokens)} drafts is outside the "
                             f"bitmask's {bitmask.shape[0]} rows")
        if not tokens:
            plain_matchers.append(matcher)
            plain_rows.append(row)
        elif isinstance(matcher, LLGuidanceMatcher) and not matcher.is_error():
            # On a copy: llguidance keeps the last mask it computed across a rollback, so
            # masks computed along drafts that are then rejected could come back stale at
            # another state of the same shape. A copy costs about a microsecond.
            copy = matcher.inner.deep_copy()
            with_drafts.append((copy, int(row), [int(t) for t in tokens]))
        else:
            _fill_one_by_one(matcher, tokens, bitmask, row)
    if with_drafts:
        mask_executor().unsafe_compute_mask_ptr_with_draft_token(
            with_drafts, bitmask.data_ptr(), bitmask.shape[1] * 4, bitmask.shape[0])
    if plain_matchers:
        fill_bitmasks(plain_matchers, bitmask, plain_rows)


def _fill_one_by_one(matcher: Matcher, tokens: list[int], bitmask: torch.Tensor,
                     row: int) -> None:
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
