"""Appending tokens to a sequence and deciding whether it is done.

A sequence stops at (in this order of precedence) its end-of-sequence token, one of its
stop token ids, a completed grammar, `max_tokens`, the end of the context, or a stop string
in its text (stop strings are checked on the detokenized text and cut from it). The grammar
has already accepted the tokens (the engine accepts a whole step's tokens in one batched
call) and noted whether it is complete (`Sequence.is_grammar_terminated`): the matchers are
the mask-fill worker's while tokens are appended.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from .engine_stats import EngineStats
from .outputs import TokenLogprob
from .scheduler import Scheduler
from .sequence import Sequence


class StopChecker:
    """Appends tokens and finishes sequences; the one place that sets `finish_reason`
    for a sequence that ran to its end."""

    def __init__(self, eos_token_ids: Seq[int], max_model_len: int, scheduler: Scheduler,
                 stats: EngineStats) -> None:
        self.eos_token_ids = set(eos_token_ids)
        self.max_model_len = max_model_len
        self.scheduler = scheduler
        self.stats = stats

    def append(self, seq: Sequence, tokens: list[int],
               logprobs: list[TokenLogprob | None] | None = None) -> None:
        """Append `tokens` (sampled or kept drafts) one by one until the sequence stops."""
        last = len(tokens) - 1
        for i, token in enumerate(tokens):
            seq.num_sampled_tokens += 1
            if seq.logprobs is not None and logprobs and logprobs[i] is not None:
                seq.logprobs.append(logprobs[i])
            if self._append_one(seq, token, grammar_done=i == last):
                return

    def append_forced(self, seq: Sequence, tokens: list[int]) -> None:
        """Append tokens the engine chose without sampling (a grammar's completion)."""
        last = len(tokens) - 1
        for i, token in enumerate(tokens):
            seq.num_forced_tokens += 1
            self.stats.forced_tokens_total += 1
            if self._append_one(seq, token, grammar_done=i == last):
                return

    def _append_one(self, seq: Sequence, token: int, grammar_done: bool) -> bool:
        """Append one token; True once the sequence has finished."""
        seq.token_ids.append(token)
        self.stats.generation_tokens_total += 1
        params = seq.params
        past_min = seq.num_output_tokens > params.min_tokens
        reason: str | None = None
        check_stops = True  # stop strings outrank everything but EOS and stop token ids
        if token in self.eos_token_ids and not params.ignore_eos and past_min:
            reason, check_stops = "stop", False
        elif token in params.stop_token_ids and past_min:
            reason, seq.stop_reason, check_stops = "stop", token, False
        elif grammar_done and seq.is_grammar_terminated:
            reason = "stop"
        elif seq.completion is not None and params.close_structures:
            pass  # the structure closer ends it at the limit (see structure_closer.py)
        elif params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            reason = "length"
        elif seq.num_tokens >= self.max_model_len:
            reason = "length"
        searched_up_to = len(seq.detokenizer.text)
        seq.detokenizer.update(seq.token_ids)
        if (check_stops and params.stop and seq.num_output_tokens > params.min_tokens
                and self._cut_at_stop_string(seq, searched_up_to)):
            reason = "stop"
        if reason is None:
            return False
        seq.finish_reason = reason
        self.scheduler.finish(seq)
        return True

    def finish(self, seq: Sequence, reason: str) -> None:
        """End `seq` now with `reason` (the structure closer's decisions)."""
        if not seq.is_finished:
            seq.finish_reason = reason
            self.scheduler.finish(seq)

    @staticmethod
    def take_back(seq: Sequence, num_tokens: int) -> None:
        """Remove the last `num_tokens` output tokens (their text and logprobs too)."""
        if num_tokens <= 0:
            return
        del seq.token_ids[-num_tokens:]
        seq.num_computed_tokens = min(seq.num_computed_tokens, seq.num_tokens - 1)
        if seq.logprobs is not None:
            del seq.logprobs[seq.num_output_tokens:]
        seq.detokenizer.reset_to(seq.token_ids, seq.num_prompt_tokens)

    @staticmethod
    def _cut_at_stop_string(seq: Sequence, old_length: int) -> bool:
        """Cut the text at the first stop string that the newest token completed: only
        text past `old_length` (the text before it) may hold its end, so text emitted before
        (under `min_tokens`, say) is never taken back."""
        text = seq.detokenizer.text
        found: tuple[int, str] | None = None
        for stop in seq.params.stop:
            index = text.find(stop, max(0, old_length - len(stop) + 1))
            if index != -1 and (found is None or index < found[0]):
                found = (index, stop)
        if found is not None:
            index, stop = found
            seq.detokenizer.text = text[:index]
            seq.stop_reason = stop
            return True
        return False
