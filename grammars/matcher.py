"""The per-sequence grammar matcher interface and the compiled grammar that makes matchers.

A `Matcher` satisfies the engine's `MaskProcessor` protocol (`corral.engine.logits_process`):
the sampler asks it to fill one row of a packed int32 bitmask `[rows, ceil(vocab/32)]`
(bit `j` of word `i` set = token `32*i + j` allowed) and tells it each sampled token.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch


class Matcher(abc.ABC):
    """One sequence's position in a grammar.

    Invariants: EOS is allowed only where the grammar may end; once `is_error()` is true it
    stays true until rolled back past the offending token (backends that cannot do that
    stay in error); a matcher in error allows only EOS so its sequence ends.
    """

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

    @property
    def num_accepted(self) -> int:
        """Number of accepted tokens (EOS included) not rolled back."""
        return 0


@dataclass
class CompiledGrammar:
    """A grammar compiled for one tokenizer and backend; cheap to make matchers from.

    `kind` and `text` are the canonical spec, `backend` the backend that compiled it,
    `compile_time_s` the seconds its one compile took (cache hits return this same object).
    """

    kind: str
    text: str
    backend: str
    compile_time_s: float
    _factory: Any = field(repr=False)

    def matcher(self) -> Matcher:
        """A fresh matcher at the grammar's start, one per sequence."""
        return self._factory()
