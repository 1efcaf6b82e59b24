"""The per-sequence grammar matcher interface and the compiled grammar that makes matchers.

A `Matcher` satisfies the engine's `MaskProcessor` protocol (`corral.engine.logits_process`):
the sampler asks it to fill one row of a packed int32 bitmask `[rows, ceil(vocab/32)]`
(bit `j` of word `i` set = token `32*i + j` allowed) and tells it each sampled token.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from typing import Any

import torch


class Matcher(abc.ABC):
    """One sequence's position in a grammar.

    Invariants: EOS is allowed only where the grammar may end; once `is_error()` is true it
    stays true until rolled back past the offending token (backends that cannot do that
    stay in error); a matcher in error allows only EOS so its sequence ends.
    """

    # The backend that made it: a grammar's matchers may come from two backends (a regex
    # moves to an outlines-core index once built), and work replayed elsewhere (completion
    # searches) must use the matcher's own, whose token-level choices it shares.
    backend_name: str = ""

    @abc.abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance past `token_id`; False (and `is_error()`) when the grammar forbids it."""

    @abc.abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens."""

    @abc.abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into `bitmask[row]` (int32 CPU, contiguous row)."""

    @abc.abstractmethod
    def is_terminated(self) -> bool:
        """True once the grammar is complete: EOS accepted or nothing else can follow."""

    @abc.abstractmethod
    def is_error(self) -> bool:
        """True once a token the grammar forbids was accepted (or the backend failed)."""

    @property
    @abc.abstractmethod
    def error_message(self) -> str | None:
        """Why the matcher is in error; None when it is not."""

    @abc.abstractmethod
    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next (for fast-forward); [] when none.

        The matcher does not advance; the caller accepts them like sampled tokens.
        """

    def can_end(self) -> bool:
        """True where EOS would be accepted now."""
        return False

    def validate_tokens(self, token_ids: list[int]) -> int:
        """How many leading `token_ids` the grammar would accept in a row from here, the
        matcher left as it was (speculative drafts are checked with this). Backends that
        cannot check without risking their state answer 0: no drafts."""
        return 0

    def ends_after(self, token_ids: list[int]) -> bool:
        """Whether the grammar may end right after `token_ids` from here; the matcher is
        left as it was."""
        if not token_ids:
            return self.can_end()
        if self.validate_tokens(token_ids) != len(token_ids):
            return False
        for token_id in token_ids:
            self.accept_token(token_id)
        can_end = self.can_end()
        self.rollback(len(token_ids))
        return can_end

    @property
    def num_accepted(self) -> int:
        """Number of accepted tokens (EOS included) not rolled back."""
        return 0


@dataclass
class CompiledGrammar:
    """A grammar compiled for one tokenizer and backend; cheap to make matchers from.

    `kind` and `text` are the canonical spec, `backend` the backend that compiled it,
    `compile_time_s` the seconds its one compile took (cache hits return this same object).
    `start_completion` is a short token sequence that ends the grammar from its start (see
    `corral.grammars.completion`), found once after the compile; None if none was found.
    """

    kind: str
    text: str
    backend: str
    compile_time_s: float
    _factory: Any = field(repr=False)
    start_completion: list[int] | None = None
    # Masks shared by this grammar's matchers, from its second matcher on (mask_cache.py).
    mask_cache: Any = field(default=None, repr=False)
    num_matchers: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def switch_to(self, backend: str, factory: Any) -> None:
        """Make later matchers with `factory` (another backend's, for the same language);
        matchers made before keep theirs."""
        with self._lock:
            self._factory = factory
            self.backend = backend

    def matcher(self) -> Matcher:
        """A fresh matcher at the grammar's start, one per sequence."""
        with self._lock:
            factory = self._factory
        matcher = factory()
        use_cache = getattr(matcher, "use_mask_cache", None)
        with self._lock:
            self.num_matchers += 1
            if use_cache is not None and self.mask_cache is None and self.num_matchers > 1:
                from corral.grammars.mask_cache import MaskCache, shared_store

                store = shared_store()
                if store.max_bytes > 0:
                    self.mask_cache = MaskCache(store)
            cache = self.mask_cache
        if use_cache is not None and cache is not None:
            use_cache(cache)
        return matcher
