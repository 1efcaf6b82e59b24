"""A sequence: one completion being generated. It owns its tokens, counters and block table."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from .detokenizer import IncrementalDetokenizer, NoDetokenizer
from .outputs import TokenLogprob

if TYPE_CHECKING:
    import torch

    from .request import Request


PENDING_TOKEN = -1  # stands for a sampled token still on the device


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """The tokens of one completion and how far the KV cache has computed them.

    Invariants: `num_computed_tokens <= num_tokens`; the block table covers at least
    `num_computed_tokens` slots; `block_hashes[i]` is the hash of full block `i` once it is
    registered in the prefix cache. Prefill, chunked prefill, prefix-cache hits, decode and
    fast-forward are all "advance num_computed_tokens towards num_tokens".
    """

    def __init__(self, seq_id: int, request: Request, index: int, tokenizer: Any,
                 generator: torch.Generator | None):
        self.seq_id = seq_id
        self.request = request
        self.index = index
        self.params = request.params
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        self.status = SequenceStatus.WAITING
        self.generator = generator
        self.matcher: Any = None  # grammar matcher (a MaskProcessor), once compiled
        self.is_grammar_terminated = False  # the matcher's state after the last accept
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.logprobs: list[TokenLogprob] | None = [] if self.params.logprobs is not None else None
        self.detokenizer: IncrementalDetokenizer | NoDetokenizer = (
            IncrementalDetokenizer(tokenizer, self.token_ids, self.params.skip_special_tokens)
            if self.params.detokenize else NoDetokenizer())
        # Async scheduling: a token sampled on the device but not yet read back sits at the
        # end of `token_ids` as PENDING_TOKEN until the next step resolves it.
        self.num_pending_tokens = 0
        self.last_token_pending = False  # the pending token is known to be its last one
        self.num_sampled_tokens = 0
        self.num_forced_tokens = 0
        self.num_preemptions = 0
        # Speculative decoding: tokens proposed for this step (not yet in `token_ids`); the
        # step computes the last token and these, and keeps the prefix the model agrees with.
        self.draft_token_ids: list[int] = []
        self.num_draft_tokens_total = 0
        self.num_accepted_draft_tokens_total = 0
        self.ngram_index: Any = None  # the proposer's index of this sequence's n-grams
        self.num_forced_ahead = 0  # tokens its grammar forces after the last resolved token
        # Always-valid endings (see structure_closer.py): tokens that end the grammar when
        # appended at position `completion_at` of `token_ids`.
        self.completion: list[int] | None = None
        self.completion_at = 0
        self.completion_checked_at = 0
        self.stale_searched_at = 0  # tokens past `completion_at` at the last search
        # A deferred completion search (its answer is taken a few checks later): the
        # future, and the tokens and text length when it started.
        self.search_future: Any = None
        self.search_checks = 0  # checks since it started
        self.search_due = 0  # checks after which its answer is taken
        self.search_failed = False  # the last answer taken near the limit found no way out
        self.search_left = 0  # its token budget and node budget
        self.search_budget = 0
        self.search_at = 0
        self.search_text_length = 0
        # Near the limit the closer may take tokens back, but never ones a stream has seen:
        # from its first check there (`close_floor`, every token before it was out) the
        # output shown is held at the point it may roll back to: `shown_tokens` tokens and
        # `shown_text_length` characters of text (None: everything is shown).
        self.close_floor: int | None = None
        self.shown_tokens: int | None = None
        self.shown_text_length = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        """The generated tokens whose values are known (pending ones left out)."""
        end = len(self.token_ids) - self.num_pending_tokens
        return self.token_ids[self.num_prompt_tokens : end]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def arrival_order(self) -> tuple[int, int]:
        return (self.request.arrival_index, self.index)

    def __repr__(self) -> str:
        return (f"Sequence({self.request.request_id}#{self.index}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, {self.status.value})")
