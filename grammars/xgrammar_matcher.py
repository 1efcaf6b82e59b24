"""`XGrammarMatcher`: the `Matcher` interface over one `xgrammar.GrammarMatcher`.

xgrammar leaves its matcher unchanged when it refuses a token; the wrapper keeps the error
(a matcher in error allows only EOS) until a rollback. Rollback depth is unlimited in
xgrammar (its `max_rollback_tokens` is deprecated and always -1), so speculative decoding
can undo any number of accepted tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import xgrammar

from corral.grammars.llguidance_backend import fill_eos_only
from corral.grammars.matcher import Matcher
from corral.grammars.param_error import ParamError


class XGrammarVocab:
    """What every matcher of one tokenizer shares: stop and special ids, token bytes."""

    def __init__(self, tokenizer, info: xgrammar.TokenizerInfo,
                 eos_token_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = info.vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.eos_set = frozenset(self.eos_token_ids)
        self.special_set = frozenset(info.special_token_ids) - self.eos_set
        self.mask_words = (self.vocab_size + 31) // 32
        self._info = info
        self._token_bytes: list[bytes] | None = None
        self._open_prefixes: frozenset[bytes] | None = None
        self._max_token_bytes = 0
        self._lock = threading.Lock()

    def tables(self) -> tuple[list[bytes], frozenset[bytes], int]:
        """(bytes of each token, proper prefixes of token texts, longest token), built once."""
        with self._lock:
            if self._token_bytes is None:
                pieces = [bytes(b) for b in self._info.decoded_vocab]
                for token_id in self.special_set | self.eos_set:
                    pieces[token_id] = b""
                self._open_prefixes = frozenset(
                    p[:k] for p in pieces for k in range(1, len(p)))
                self._max_token_bytes = max(map(len, pieces))
                self._token_bytes = pieces
            return self._token_bytes, self._open_prefixes, self._max_token_bytes

    def tokenize(self, text: bytes) -> list[int]:
        """The canonical token ids of `text`; [] unless they spell it byte for byte."""
        pieces = self.tables()[0]
        try:
            ids = self.tokenizer.encode(text.decode("utf-8"), add_special_tokens=False)
        except UnicodeDecodeError:
            return []
        if b"".join(pieces[t] if 0 <= t < len(pieces) else b"" for t in ids) != text:
            return []
        return ids

    def stable_prefix(self, text: bytes, ids: list[int]) -> list[int]:
        """The leading `ids` (spelling `text`) that no text after `text` can re-tokenize:
        those ending before the first byte from which the rest of `text` starts a longer
        token."""
        pieces, open_prefixes, longest = self.tables()
        cut = len(text)
        for start in range(max(0, len(text) - longest), len(text)):
            if text[start:] in open_prefixes:
                cut = start
                break
        kept, end = [], 0
        for token_id in ids:
            end += len(pieces[token_id])
            if end > cut:
                break
            kept.append(token_id)
        return kept


def allows_only_eos(inner: xgrammar.GrammarMatcher, vocab: XGrammarVocab) -> bool:
    """Whether EOS is all `inner` allows next (one mask fill)."""
    mask = torch.zeros((1, vocab.mask_words), dtype=torch.int32)
    inner.fill_next_token_bitmask(mask, 0)
    expected = torch.zeros_like(mask)
    fill_eos_only(expected[0], vocab.eos_token_ids)
    return bool(torch.equal(mask, expected))


class XGrammarMatcher(Matcher):
    """A `Matcher` over one `xgrammar.GrammarMatcher` (stop tokens: the engine's EOS ids)."""

    backend_name = "xgrammar"

    def __init__(self, compiled: xgrammar.CompiledGrammar, vocab: XGrammarVocab) -> None:
        self.inner = xgrammar.GrammarMatcher(compiled)
        self.vocab = vocab
        self._num_accepted = 0  # EOS included
        self._is_ended = False  # EOS accepted (always the last accepted token)
        self._error: str | None = None
        self._version = 0  # bumped on every state change; keys `_only_eos`
        self._only_eos: tuple[int, bool] = (-1, False)

    def pre_accept(self, token_id: int) -> bool | None:
        """The verdict on `token_id` where the native matcher need not be asked, else None.

        Used with `post_accept` by batched accepts: ask the native matcher only on None.
        """
        if self._error is not None:
            return False
        if self._is_ended:
            self._error = f"token {token_id} after the end of the grammar"
        elif not 0 <= token_id < self.vocab.vocab_size or token_id in self.vocab.special_set:
            self._error = f"special or unknown token {token_id} is not allowed by the grammar"
        elif token_id in self.vocab.eos_set and not self.inner.is_completed():
            self._error = f"EOS token {token_id} before the grammar is complete"
        else:
            return None
        return False

    def post_accept(self, token_id: int, is_accepted: bool) -> bool:
        """Record the native matcher's verdict on `token_id`; returns it."""
        if is_accepted:
            self._num_accepted += 1
            self._is_ended = token_id in self.vocab.eos_set
            self._version += 1
        else:
            self._error = f"token {token_id} is not allowed by the grammar"
        return is_accepted

    def accept_token(self, token_id: int) -> bool:
        token_id = int(token_id)
        verdict = self.pre_accept(token_id)
        if verdict is not None:
            return verdict
        return self.post_accept(token_id, self.inner.accept_token(token_id))

    def rollback(self, num_tokens: int) -> None:
        if num_tokens < 0 or num_tokens > self._num_accepted:
            raise ParamError(
                "num_tokens", f"cannot roll back {num_tokens} of {self._num_accepted} tokens")
        if num_tokens:
            self.inner.rollback(num_tokens)
            self._num_accepted -= num_tokens
            self._is_ended = False
        self._error = None
        self._version += 1

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if self._error is not None or self._is_ended:
            fill_eos_only(bitmask[row], self.vocab.eos_token_ids)
            return
        self.inner.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        if self._error is not None:
            return False
        return self._is_ended or (self.inner.is_completed() and self._allows_only_eos())

    def is_error(self) -> bool:
        return self._error is not None

    @property
    def error_message(self) -> str | None:
        return self._error

    def forced_tokens(self) -> list[int]:
        if self._error is not None or self._is_ended or self.inner.is_completed():
            return []
        try:
            forced = self.inner.find_jump_forward_string().encode("utf-8")
        except UnicodeDecodeError:  # it ends inside a character: no whole token is sure
            return []
        ids = self.vocab.tokenize(forced)
        kept = self.vocab.stable_prefix(forced, ids)
        if len(kept) < len(ids):  # nothing can follow a text that ends the grammar
            after = self.inner.fork()
            if after.accept_string(forced) and after.is_completed() and \
                    allows_only_eos(after, self.vocab):
                kept = ids
        return kept[:self.validate_tokens(kept)]

    def validate_tokens(self, token_ids: list[int]) -> int:
        """How many leading `token_ids` would be accepted in a row (state left as it was)."""
        if self._error is not None or self._is_ended:
            return 0
        count = num_eos = 0
        for token_id in token_ids:
            token_id = int(token_id)
            if token_id in self.vocab.eos_set:
                num_eos = int(self.inner.is_completed())
                break
            if not 0 <= token_id < self.vocab.vocab_size or token_id in self.vocab.special_set \
                    or not self.inner.accept_token(token_id):
                break
            count += 1
        if count:
            self.inner.rollback(count)
        return count + num_eos

    @property
    def is_live(self) -> bool:
        """Whether the native matcher writes the mask (no error, EOS not accepted yet)."""
        return self._error is None and not self._is_ended

    def can_end(self) -> bool:
        return self._error is None and not self._is_ended and self.inner.is_completed()

    @property
    def num_accepted(self) -> int:
        return self._num_accepted

    def _allows_only_eos(self) -> bool:
        """Whether EOS is all the grammar allows now (one mask fill per state, cached)."""
        version, found = self._only_eos
        if version != self._version:
            found = allows_only_eos(self.inner, self.vocab)
            self._only_eos = (self._version, found)
        return found
