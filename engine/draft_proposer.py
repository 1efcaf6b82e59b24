"""Draft tokens for speculative decoding: no draft model, just what is already known.

A sequence's drafts are (a) the tokens its grammar forces next, which the model is sure to
accept, then (b) a continuation found by n-gram lookup: the last `n` tokens (n from
`max_n` down to `min_n`) are looked up among earlier positions of the prompt and output,
and the tokens that followed the most recent earlier occurrence are proposed. Drafts are
cut where the grammar would refuse them and after an end-of-sequence token, so every draft
position has a well-defined grammar mask and the verification keeps the grammar's
guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from corral.grammars.param_error import ParamError

from .sequence import Sequence


class NgramIndex:
    """Most recent position following each n-gram of one sequence's tokens.

    `follows[key] = i` means `tokens[i - n : i] == key` for the latest such `i` seen, with
    `i < len(tokens)`, so a lookup of the sequence's own last n-gram finds an earlier
    occurrence with at least one token after it. Updated incrementally as tokens grow.
    """

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n
        self.follows: dict[tuple[int, ...], int] = {}
        self.num_indexed = 0  # positions i < num_indexed are in `follows`

    def update(self, tokens: list[int]) -> None:
        end = len(tokens)  # the last n-gram (ending at `end`) has no follower yet
        follows = self.follows
        for i in range(max(self.num_indexed, self.min_n), end):
            for n in range(self.min_n, min(self.max_n, i) + 1):
                follows[tuple(tokens[i - n : i])] = i
        self.num_indexed = max(self.num_indexed, end)

    def lookup(self, tokens: list[int], num_tokens: int) -> list[int]:
        """Up to `num_tokens` tokens that followed the longest matching earlier n-gram."""
        for n in range(min(self.max_n, len(tokens)), self.min_n - 1, -1):
            i = self.follows.get(tuple(tokens[len(tokens) - n :]))
            if i is not None:
                return tokens[i : i + num_tokens]
        return []

    def truncate(self, num_tokens: int) -> None:
        """Forget positions at or past `num_tokens` (tokens were removed)."""
        if num_tokens < self.num_indexed:
            self.follows = {k: i for k, i in self.follows.items() if i < num_tokens}
            self.num_indexed = num_tokens


class DraftProposer:
    """Proposes up to `num_tokens` drafts per sequence and step."""

    def __init__(self, num_tokens: int, eos_token_ids: Seq[int], min_n: int = 2,
                 max_n: int = 4) -> None:
        if num_tokens < 1:
            raise ParamError("num_speculative_tokens", f"must be at least 1 (got {num_tokens})")
        self.num_tokens = num_tokens
        self.eos_token_ids = set(eos_token_ids)
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, seq: Sequence, use_forced: bool, use_ngram: bool) -> list[int]:
        """Drafts for `seq` (whose tokens are all known), valid for its grammar."""
        budget = self.num_tokens
        params = seq.params
        if params.max_tokens is not None:
            budget = min(budget, params.max_tokens - seq.num_output_tokens - 1)
        if budget <= 0:
            return []
        matcher = seq.matcher
        drafts: list[int] = []
        if use_forced and matcher is not None:
            drafts = matcher.forced_tokens()[:budget]
        if use_ngram and len(drafts) < budget:
            index = seq.ngram_index
            if index is None:
                index = seq.ngram_index = NgramIndex(self.min_n, self.max_n)
            index.update(seq.token_ids)
            history = seq.token_ids + drafts if drafts else seq.token_ids
            drafts = drafts + index.lookup(history, budget - len(drafts))
        return self._cut(seq, drafts)

    def _cut(self, seq: Sequence, drafts: list[int]) -> list[int]:
        for i, token in enumerate(drafts):
            if token in self.eos_token_ids:
                drafts = drafts[: i + 1]
                break
        if drafts and seq.matcher is not None:
            drafts = drafts[: seq.matcher.validate_tokens(drafts)]
        return drafts
