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

from corral.grammars.mask_fill import MaskFill
from corral.grammars.matcher import Matcher


def fill_bitmasks_with_drafts(matchers: Sequence[Matcher], drafts: Sequence[list[int]],
                              bitmask: torch.Tensor, first_rows: Sequence[int]) -> None:
    """Fill rows `first_rows[i] .. first_rows[i] + len(drafts[i])` for matcher `i`.

    `bitmask`: int32 `[num_rows, ceil(vocab/32)]`, CPU, contiguous. Every draft list must be
    accepted by its grammar in full (see `Matcher.validate_tokens`); it may end with an
    end-of-sequence token, after which the row's content is unspecified (nothing is sampled
    from it). (See `MaskFill` to run only the native part on another thread.)"""
    fill = MaskFill(matchers, bitmask, first_rows, drafts)
    fill.compute()
    fill.finish()
