"""Filling the masks of a batch of matchers at once.

llguidance matchers are filled by one `LLExecutor` call and xgrammar matchers by one
`BatchGrammarMatcher` call; both compute their rows in parallel native threads without the
GIL, writing the same layout (bit `j` of word `i` of a row = token `32*i + j`). Other
matchers fill their own rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from corral.grammars.grammar_threads import grammar_threads, mask_executor, xgrammar_batch
from corral.grammars.mask_fill import MaskFill
from corral.grammars.matcher import Matcher

__all__ = ["fill_bitmasks", "grammar_threads", "mask_executor", "xgrammar_batch"]


def fill_bitmasks(matchers: Sequence[Matcher], bitmask: torch.Tensor,
                  rows: Sequence[int] | None = None) -> None:
    """Fill `bitmask[rows[i]]` from `matchers[i]` for every i.

    `bitmask`: int32 `[num_rows, ceil(vocab/32)]`, CPU, contiguous (preallocated by the
    caller); `rows` defaults to 0..len(matchers)-1 and must be distinct. (See `MaskFill`
    to run only the native part on another thread.)
    """
    rows = list(range(len(matchers))) if rows is None else rows
    fill = MaskFill(matchers, bitmask, rows)
    fill.compute()
    fill.finish()
