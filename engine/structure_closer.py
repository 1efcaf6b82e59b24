"""Constrained outputs that always finish valid, even when `max_tokens` cuts them.

For a constrained sequence (with `close_structures` on, the default), the engine keeps a
*completion*: tokens that, appended at some earlier point of the output, end the grammar
validly (close the string, the arrays, the objects, the tool call) within the tokens left
then (to `max_tokens` or the context's end). After each step near the limit it looks for
a completion from the new state; if none fits the tokens now left, the step's tokens (back
to where the kept completion starts) are taken back and the completion is appended
instead, and the sequence ends with finish_reason "stop". A sequence whose grammar's start
completion (searched once per grammar, in the compile thread) does not fit its whole budget
ends at once, with no output, finish_reason "length".

Streams never see a token taken back: from the sequence's first check near the limit (its
*floor*: everything before may have been streamed) the output shown is held at the point
the closer may roll back to, and a roll back never goes below the floor. So the first check
looks for the way out again from there (the kept one, else a search, then a search now and
then as the model goes on); where none is ever found, the output ends as it is, with
"length". A stream and a
non-streamed request get the same tokens: the closer's decisions do not depend on what was
shown.

Work is bounded: nothing is computed while the limit is far (how far depends on the kept
completion's length: a longer one needs more time to be re-found); in the watch zone the kept
completion is re-checked from the new state each step (one native call, so the output shown
keeps up with the model), its tails now and then, and only a completion that no longer
applies triggers a search (after many tokens on the engine's thread; after two when worker
processes search, so that a stream does not stall); searches that can wait run a few per
engine step, entering the zone included. Once in the zone, a sequence is checked every step
until it ends.

Every search is *deferred*: it starts from the state after this step and its answer is
taken some checks later, as a completion found that many steps back (the output shown and
any roll back count from there): two checks later while the end is not near, at the next
check once it is (then a roll back costs the one token the model added meanwhile). With a
`CompletionSearchPool` it runs in a worker process while the engine goes on (the check it
is due at waits for it if it is late); without one it runs at once on the engine thread.
Either way the same completion is taken at the same step, so outputs do not depend on
where, or how fast, searches ran; and near the limit of a large batch the engine's loop
does not stall on searches (their answers arrive with the next step).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .sequence import Sequence
from .stop_checker import StopChecker

FAR = 512  # tokens left above which nothing is computed
WATCH = 32  # ... with a completion kept: above this plus twice its length
NEAR = 4  # tokens left beyond the kept completion under which it is checked every step
SLACK = 32  # ... every 4 steps under this margin
REFRESH_EVERY = 16  # ... and every 16 steps above it
CLOSE_MARGIN = 2  # spare tokens under which a completion that applies is appended at once
NEAR_END = 8  # tokens left at which a changed structure is searched for (each step)
STALE_SEARCH = 24  # tokens since the kept completion at which a changed structure is too
HELD_SEARCH = 2  # ... with a pool of worker processes: the output shown waits for it
RETRY_EVERY = 4  # steps between searches while no way out is known (the output waits)
SEARCHES_PER_STEP = 1  # searches per engine step that could wait (the end is not near)
SEARCHES_PER_WORKER = 4  # ... with a pool of worker processes: this many per worker
DEFER_CHECKS = 2  # checks (engine steps) after which a deferred search's answer is taken
NODE_BUDGET = 48  # search nodes per completion search on the engine's loop, at least
MAX_NODE_BUDGET = 192  # ... at most: twice the kept completion's length (a longer way out
# needs a larger search; a failed one costs a roll back past every token since)
TAIL_STARTS = 8  # tails of the kept completion tried when it no longer applies whole
NO_COMPLETION_LIMIT = 256  # budgets a grammar with no start completion found ends at once


class StructureCloser:
    """Keeps each constrained sequence's completion and forces it when needed."""

    def __init__(self, vocab: Callable[[], Any], max_model_len: int,
                 pool: Any = None) -> None:
        self.vocab = vocab  # the compiler's CompletionVocab, built on first use
        self.max_model_len = max_model_len
        # A CompletionSearchPool, or None (deferred searches run on the engine thread). The
        # searches per step follow from the configuration, never from the pool's state, so
        # that a run's outputs do not depend on how soon its workers came up.
        self.pool = pool
        self.searches_per_step = (SEARCHES_PER_STEP if pool is None
                                  else SEARCHES_PER_WORKER * pool.num_workers)
        # While the model has left the kept completion's structure, the output shown waits
        # at the point a roll back would land (a stream stalls): with workers to search,
        # a new way out is looked for after a couple of tokens, not after many.
        self.stale_search = STALE_SEARCH if pool is None else HELD_SEARCH
        self.num_searches = 0
        self.num_deferred = 0  # searches deferred to the next check
        self.num_pooled = 0  # ... of them, sent to a worker process
        self.num_late = 0  # ... of those, not back when due (searched here instead)
        self.search_seconds = 0.0
        self.num_closed = 0
        self._searches_this_step = 0
        self.num_taken_back = 0  # generated tokens given up to close a structure
        self.num_appended = 0  # completion tokens appended without a forward pass
        self.num_unclosed = 0  # outputs cut by the limit with no valid end found in time

    @staticmethod
    def applies(seq: Sequence) -> bool:
        return seq.matcher is not None and seq.params.close_structures

    def tokens_left(self, seq: Sequence) -> int:
        """Tokens the sequence may still append: to `max_tokens` or the context's end."""
        left = self.max_model_len - seq.num_tokens
        if seq.params.max_tokens is not None:
            left = min(left, seq.params.max_tokens - seq.num_output_tokens)
        return left

    def start(self, seq: Sequence, stop_checker: StopChecker) -> None:
        """At grammar-ready time: keep the grammar's start completion (found once per
        grammar, off the engine loop); end the sequence at once if it does not fit."""
        if not self.applies(seq):
            return
        completion = getattr(seq.request.compiled_grammar, "start_completion", None)
        left = self.tokens_left(seq)
        if completion is None:
            # None found (the search looks up to 1024 tokens deep): a budget this small
            # cannot hold one either; a larger one runs unsteered until the watch zone.
            if left <= NO_COMPLETION_LIMIT:
                stop_checker.finish(seq, "length")
            return
        if len(completion) > left:
            stop_checker.finish(seq, "length")
            return
        self._keep(seq, list(completion))
        if left > _watch_from(completion):
            return
        if left - len(completion) <= CLOSE_MARGIN:  # no room to do better: end it now
            self._close(seq, stop_checker)
            return
        # In the watch zone from the start: nothing is shown until the first check, which
        # may roll back to here (the prompt's end) if it finds no way out.
        seq.shown_tokens = seq.num_tokens
        seq.shown_text_length = len(seq.detokenizer.text)

    def is_idle(self, seq: Sequence, num_pending: int = 0) -> bool:
        """Whether `check` would do nothing now: no search of the sequence is out and its
        limit is still far. `num_pending`: tokens at the end of `seq` that are placeholders
        for a step in flight (not counted: `check` runs without them)."""
        if seq.search_future is not None or seq.close_floor is not None:
            return False  # (in the zone, the output shown may be held: it stays watched)
        return self.tokens_left(seq) + num_pending > _watch_from(seq.completion)

    def check(self, seq: Sequence, stop_checker: StopChecker) -> None:
        """After a step appended tokens to `seq` (the grammar has accepted them)."""
        if seq.is_finished or not self.applies(seq):
            return
        left = self.tokens_left(seq)
        self._collect(seq, left)
        kept = seq.completion
        if seq.close_floor is None:  # not in the watch zone yet
            if left > _watch_from(kept):
                return
            # Entering it: all before is out. From here on the sequence is checked each
            # step, even when a shorter completion found later moves the zone's edge.
            self._enter_zone(seq, left)
            kept = seq.completion
        since_check = seq.num_tokens - seq.completion_checked_at
        if kept is None:  # no way out known yet (the output shown waits): look when allowed
            if left <= 0:  # at the limit with no way out: it ends as it is
                self._close(seq, stop_checker)
            elif left <= NEAR_END:  # each step, answered at the next one
                seq.completion_checked_at = seq.num_tokens
                self._defer_search(seq, left, due=1)
            elif since_check >= RETRY_EVERY and self._may_search():
                seq.completion_checked_at = seq.num_tokens
                self._defer_search(seq, left)
            return
        margin = left - len(kept)
        every = 1 if margin <= NEAR else (4 if margin <= SLACK else REFRESH_EVERY)
        if left > 0 and since_check < every:
            # Between full checks, one native check of the whole kept completion: while
            # the model stays inside the structure (a string, a number) it still applies,
            # and the output shown catches up at once instead of every few steps.
            if seq.completion_at < seq.num_tokens and len(kept) <= left \
                    and seq.matcher.ends_after(kept):
                self._keep_or_close(seq, kept, left, stop_checker)
                return
            # The output shown waits meanwhile: past a few tokens, look for a new way out
            # from here (the tails are left to the next full check).
            if left > NEAR_END and self._held_too_long(seq) and self._may_search():
                seq.stale_searched_at = seq.num_tokens - seq.completion_at
                self._defer_search(seq, left)
            return
        seq.completion_checked_at = seq.num_tokens
        still = self._still_applies(seq, left)  # a few accepts and a rollback
        if still is not None:
            self._keep_or_close(seq, still, left, stop_checker)
            return
        # The model changed the structure since the kept completion. Rolling back to it
        # stays possible, so a search (the costly part) runs only when the tokens a roll
        # back would lose grow many, and when the end is near, to end from where the model
        # is rather than from where the kept completion starts.
        since = seq.num_tokens - seq.completion_at
        stale = self.stale_search
        if left > NEAR_END and (since < stale or since - seq.stale_searched_at < stale
                                or not self._may_search()):
            return
        seq.stale_searched_at = since
        if left > NEAR_END:  # the kept completion still stands meanwhile
            self._defer_search(seq, left)
            return
        # Near the end: look from here (answered at the next check, the kept completion
        # standing meanwhile) unless the kept one is at most a token back, or the last look
        # found nothing: then roll back to it now.
        if left > 0 and since > 1 and not seq.search_failed:
            self._defer_search(seq, left, due=1)
            return
        self._close(seq, stop_checker)

    def _held_too_long(self, seq: Sequence) -> bool:
        """Whether the output shown has waited long enough (`stale_search` tokens past the
        kept completion, and since the last search) for a search to start now."""
        if seq.search_future is not None:
            return False
        since = seq.num_tokens - seq.completion_at
        return since >= self.stale_search and since - seq.stale_searched_at >= self.stale_search

    def begin_step(self) -> None:
        """A new engine step: its budget of searches that can wait is renewed."""
        self._searches_this_step = 0

    def _may_search(self) -> bool:
        """Whether a search that can wait (the end is not near) may start this step: a few
        per step, so that a step's host work stays short; the others start in later steps.
        Never a second one for a sequence whose last one is still out."""
        return self._searches_this_step < self.searches_per_step

    def _defer_search(self, seq: Sequence, left: int, due: int = DEFER_CHECKS) -> None:
        """Search from the state after this step; the answer is taken `due` checks later
        (at the next one once the end is near)."""
        if seq.search_future is not None or left <= 0:
            return
        seq.search_checks = 0
        seq.search_due = due
        self._searches_this_step += 1
        self.num_deferred += 1
        seq.search_at = seq.num_tokens
        seq.search_text_length = len(seq.detokenizer.text)
        budget = self._budget(seq)
        seq.search_left, seq.search_budget = left, budget
        matcher = seq.matcher
        grammar = seq.request.compiled_grammar
        if (self.pool is not None and self.pool.ready and grammar is not None
                and matcher.num_accepted == seq.num_output_tokens):
            tokens = seq.token_ids[seq.num_prompt_tokens:]
            backend = matcher.backend_name or grammar.backend  # the one the search replays
            try:
                seq.search_future = self.pool.submit(grammar.kind, grammar.text,
                                                     backend, tokens, left, budget)
                self.num_pooled += 1
                return
            except Exception:  # noqa: BLE001 - a broken pool: search here from now on
                self.pool = None
        done: Future = Future()
        done.set_result(self._search(seq, left, budget))
        seq.search_future = done

    def _collect(self, seq: Sequence, left: int) -> None:
        """Take the answer of the sequence's deferred search when it is due (or the end is
        near): keep it as a completion found where the search started (unless a later one
        is kept). An answer not back by then is searched here (the matcher rolled back to
        where the search started): the same answer, so the step it is taken at and what
        it is never depend on how fast a worker was."""
        future = seq.search_future
        if future is None:
            return
        seq.search_checks += 1
        if seq.search_checks < seq.search_due and left > NEAR_END:
            return
        seq.search_future = None
        start = time.perf_counter()
        if future.done() and future.exception() is None:
            found = future.result()
        else:
            future.cancel()
            self.num_late += 1
            found = self._search_back(seq)
        self.num_searches += 1
        self.search_seconds += time.perf_counter() - start
        at = seq.search_at
        seq.search_failed = found is None and left <= NEAR_END
        if found is None or at < (seq.close_floor or 0) or seq.num_tokens < at:
            return
        if seq.completion is not None and seq.completion_at > at:
            return
        self._keep(seq, found, at, seq.search_text_length)
        seq.completion_checked_at = -1  # checked from the current state this step

    def _keep_or_close(self, seq: Sequence, completion: list[int], left: int,
                       stop_checker: StopChecker) -> None:
        """Keep a completion that applies from here; append it at once (nothing taken back)
        when it leaves too little room for the model to go elsewhere and come back."""
        self._keep(seq, completion)
        if left - len(completion) <= CLOSE_MARGIN:
            self._close(seq, stop_checker)

    def _still_applies(self, seq: Sequence, left: int) -> list[int] | None:
        """The kept completion from here (the model may have written some of it, or its
        start), if it still ends the grammar within `left` tokens; else None."""
        kept, since = seq.completion, seq.num_tokens - seq.completion_at
        new = seq.token_ids[seq.completion_at:]
        if kept[:since] == new and len(kept) - since <= left:
            return kept[since:]  # the model wrote the completion's own tokens
        # Its tail from a few tokens in: the model may have written a closer of its own.
        for start in range(min(len(kept), TAIL_STARTS)):
            tail = kept[start:]
            if len(tail) <= left and seq.matcher.ends_after(tail):
                return tail
        if left >= 0 and seq.matcher.can_end():
            return []
        return None

    def _close(self, seq: Sequence, stop_checker: StopChecker) -> None:
        """Take back the tokens since the kept completion was found and append it; where it
        was found before the watch zone (tokens since may have been streamed), nothing
        valid can end the output any more: it ends as it is, with "length"."""
        if seq.completion is None or seq.completion_at < (seq.close_floor or 0):
            self.num_unclosed += 1
            stop_checker.finish(seq, "length")
            return
        completion = seq.completion
        num_back = seq.num_tokens - seq.completion_at
        matcher = seq.matcher
        matcher.rollback(min(num_back, matcher.num_accepted))
        stop_checker.take_back(seq, num_back)
        for token in completion:
            if not matcher.accept_token(token):
                stop_checker.finish(seq, "length")  # cannot happen: it was checked
                return
        seq.is_grammar_terminated = matcher.is_terminated()
        self.num_closed += 1
        self.num_taken_back += num_back
        self.num_appended += len(completion)
        stop_checker.append_forced(seq, completion)
        if not seq.is_finished:
            stop_checker.finish(seq, "stop")

    def _keep(self, seq: Sequence, completion: list[int], at: int | None = None,
              text_length: int | None = None) -> None:
        """Keep `completion` as applying after the first `at` tokens (default: all), where
        the text was `text_length` characters long."""
        at = seq.num_tokens if at is None else at
        seq.completion = completion
        seq.completion_at = at
        seq.stale_searched_at = 0
        if seq.close_floor is not None:  # a roll back lands here at the earliest: show it
            seq.shown_tokens = at
            seq.shown_text_length = (len(seq.detokenizer.text) if text_length is None
                                     else text_length)

    def _enter_zone(self, seq: Sequence, left: int) -> None:
        """The first check near the limit. Tokens up to here may have been streamed, so a
        roll back can land here at the earliest: the kept completion (found earlier) must be
        found again from here (or one found by a search, now or in later checks)."""
        if seq.shown_tokens is None:  # the usual case: everything so far may be out
            seq.shown_tokens = seq.num_tokens
            seq.shown_text_length = len(seq.detokenizer.text)
        seq.close_floor = floor = seq.shown_tokens  # (held from the start: the prompt's end)
        seq.completion_checked_at = seq.num_tokens
        kept = seq.completion
        still = self._still_applies(seq, left) if kept is not None else None
        if still is not None:
            self._keep(seq, still)
            return
        if kept is not None and seq.completion_at < floor:
            seq.completion = None  # a way out found before the floor cannot be used
        # The search waits for a later step's turn only while the limit is still far.
        urgent = left <= SLACK + (len(kept) if kept is not None else 0)
        if urgent:
            self._defer_search(seq, left, due=1)
        elif self._may_search():
            self._defer_search(seq, left)

    def _search_back(self, seq: Sequence) -> list[int] | None:
        """The deferred search, run now from where it started: the tokens since are taken
        back from the matcher for the search and accepted again after it."""
        since = seq.token_ids[seq.search_at:]
        matcher = seq.matcher
        if len(since) > matcher.num_accepted:
            return None
        matcher.rollback(len(since))
        try:
            return self._search(seq, seq.search_left, seq.search_budget)
        finally:
            for token in since:
                matcher.accept_token(token)

    @staticmethod
    def _budget(seq: Sequence) -> int:
        kept = len(seq.completion) if seq.completion is not None else 0
        return min(max(NODE_BUDGET, 2 * kept), MAX_NODE_BUDGET)

    def _search(self, seq: Sequence, max_tokens: int, budget: int) -> list[int] | None:
        """Search now, on this thread (a deferred search counts when its answer is taken)."""
        from corral.grammars.completion import shortest_completion

        start = time.perf_counter()
        found = shortest_completion(seq.matcher, max_tokens, vocab=self.vocab(),
                                    node_budget=budget)
        self.search_seconds += time.perf_counter() - start
        return found


def _watch_from(kept: list[int] | None) -> int:
    """Tokens left at or under which a sequence keeping `kept` is in the watch zone."""
    return FAR if kept is None else min(FAR, WATCH + 2 * len(kept))
