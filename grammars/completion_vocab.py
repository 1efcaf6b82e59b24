"""The candidate tokens of the completion search (`corral.grammars.completion`).

A tokenizer's vocabulary is cut to a few hundred tokens that can close, fill or separate JSON
and similar grammars: closers (`"`, `"}`, `]}`, `":`), literals and punctuation (`null`, `{}`,
`,"`), digits, letters and other single characters. Each gets a tier (a node's children come
from one tier), a rank in it and a class (interchangeable members, cut to the first where
many are allowed). Large vocabularies (Llama 3's 128k) hold many more multi-byte punctuation
tokens than small ones; the order below keeps the greedy path on tokens that lead out:

- pieces that end by asking for one more member (`,`, `:"",`, `"},`) come after the others
  of their tier and rank: where the grammar may close instead, they would walk into another
  member (another additional property, another item), and again, until the bound;
- a key's closers (`":`, `":""`) rank with the pure closers: the colon must follow anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from corral.grammars.param_error import ParamError

TIER_CLOSE, TIER_VALUE, TIER_FILL = 0, 1, 2  # a node's children come from one tier
_CLOSERS = frozenset(b'"}])')
_JSON_PUNCTUATION = frozenset(b'"}],:{[')
_KEY_CLOSERS = (b'":', b'":""')  # a key's end and colon (and an empty string value)
_MAX_PUNCTUATION_BYTES = 4
_LITERALS = (b"null", b"true", b"false", b"[]", b"{}")
_SIGNIFICANT = b"-.@:/_+"  # characters that shape formats: a class each
_WHITESPACE = (b"\n", b" ", b"\t", b"\n\n", b"  ", b"\r\n")
LOWER = ord("a")  # the class of lowercase letters; many allowed = free text
# Texts of common formats (a version, an e-mail, a date-time, a URL, a UUID), tried where free
# text hides its way out: an unanchored `pattern` allows any text until it has matched.
_FORMAT_SAMPLES = (b"0.0.0", b"a@a.aa", b"http://a.aa", b"2000-01-01T00:00:00Z",
                   b"00000000-0000-0000-0000-000000000000")

Edge = tuple[tuple[int, ...], bytes]  # tokens and the bytes they spell
# A special token (`<|end|>`, `<|call|>`) spells no text; it is named by this byte (never in
# UTF-8 text) and its own name, so a path through it is a state of its own. Grammars that
# frame their output with them (harmony's channels and calls) close through them.
SPECIAL = b"\xff"


def _classify(piece: bytes) -> tuple[int, int, int] | None:
    """(tier, rank in the tier, class) of a token's bytes; None for no candidate.

    Class -1: a candidate of its own; the members of a class are interchangeable unless their
    states differ (digits, lowercase letters, ...).
    """
    if piece.startswith(SPECIAL):  # a section's end or a frame's marker: tried first
        return TIER_CLOSE, 0, -1
    if len(piece) <= _MAX_PUNCTUATION_BYTES and set(piece) <= _CLOSERS:
        # The empty string first, then JSON's closers (`"}`, `]}`, ...), then Lark-ish ones.
        return TIER_CLOSE, 0 if piece == b'""' else 2 if b")" in piece else 1, -1
    if len(piece) <= _MAX_PUNCTUATION_BYTES and set(piece) <= _JSON_PUNCTUATION:
        if piece[0] in _CLOSERS:  # closes, then goes on (`",`, `":"`, `},{`)
            return TIER_CLOSE, 1 if piece in _KEY_CLOSERS else 3, -1
        return TIER_VALUE, 1 if piece in _LITERALS else 2, -1
    if piece in _LITERALS:
        return TIER_VALUE, 1, -1
    if len(piece) == 1 and piece.isdigit():
        return TIER_VALUE, 0, ord("0")
    if piece in _WHITESPACE:
        return TIER_FILL, 3, ord(" ")
    if len(piece) != 1 or not 0x20 < piece[0] < 0x7F:
        return None
    if piece.islower():
        return TIER_FILL, 0, LOWER
    if piece.isupper():
        return TIER_FILL, 1, ord("A")
    return (TIER_FILL, 2, piece[0]) if piece[0] in _SIGNIFICANT else (TIER_FILL, 4, ord("!"))


def _spell(text: bytes, first_ids: dict[bytes, int]) -> tuple[int, ...] | None:
    """`text` in the fewest tokens; None if some byte of it is in no token."""
    best: list[tuple[int, ...] | None] = [()] + [None] * len(text)  # [len(text) + 1] prefixes
    for end in range(1, len(text) + 1):
        for start in range(end):
            token_id = first_ids.get(text[start:end])
            head = best[start]
            if token_id is not None and head is not None and (
                    best[end] is None or len(head) + 1 < len(best[end])):
                best[end] = (*head, token_id)
    return best[-1]


def _order(piece: bytes, tier: int, rank: int) -> tuple:
    """Sort key of a candidate: by tier and rank; asking for one more member last; JSON's
    closers by kind (`"`, `}`, `]`); longer first (fewer tokens)."""
    return tier, rank, piece.endswith(b","), b'"}])'.find(piece[:1]), -len(piece), piece


@dataclass(frozen=True)
class CompletionVocab:
    """The candidate tokens of the search, for one tokenizer (built once, shared, read-only).

    Candidates are in priority order; `token_bytes[t]` is the text of every token `t`
    (`SPECIAL` + its name for special tokens, b"" for EOS) and `mask_words` the bitmask
    width, ceil(vocab_size / 32); `samples`
    the texts of common formats in tokens, shortest first.
    """

    token_ids: tuple[int, ...]  # [num_candidates]
    tiers: tuple[int, ...]  # [num_candidates]
    classes: tuple[int, ...]  # [num_candidates]
    token_bytes: tuple[bytes, ...]  # [vocab_size]
    eos_token_ids: tuple[int, ...]
    mask_words: int
    samples: tuple[Edge, ...] = ()
    singles: tuple[int, ...] = field(init=False)  # [256] the one-byte candidate of a byte, -1

    def __post_init__(self) -> None:
        singles = [-1] * 256
        for i, token_id in enumerate(self.token_ids):
            if len(self.token_bytes[token_id]) == 1:
                singles[self.token_bytes[token_id][0]] = i
        object.__setattr__(self, "singles", tuple(singles))

    @cached_property
    def printable(self) -> np.ndarray:
        """[num_printable] the one-byte candidates of printable ASCII but `"` and `\\`: where
        all are allowed, text is free (a string's content)."""
        return np.asarray([i for b, i in enumerate(self.singles)
                           if i >= 0 and 0x20 <= b < 0x7F and b not in b'"\\'], dtype=np.int64)

    @cached_property
    def closers(self) -> tuple[int, ...]:
        """The candidates `"`, `}`, `]` and `)` alone (those the vocabulary has)."""
        return tuple(self.singles[b] for b in b'"}])' if self.singles[b] >= 0)

    @cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """[num_candidates] each: bitmask word, bit, tier, class of every candidate."""
        ids = np.asarray(self.token_ids, dtype=np.int64)
        return (ids >> 5, (ids & 31).astype(np.int32), np.asarray(self.tiers),
                np.asarray(self.classes))

    @classmethod
    def from_token_bytes(cls, token_bytes: Sequence[bytes | None], vocab_size: int,
                         eos_token_ids: Sequence[int]) -> CompletionVocab:
        """The candidates among tokens given by their bytes (None or b"": tokens that are
        no candidates; `SPECIAL` + name: special tokens, candidates)."""
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ParamError("vocab_size", f"must be a positive integer (got {vocab_size!r})")
        if len(token_bytes) > vocab_size:
            raise ParamError("token_bytes",
                             f"{len(token_bytes)} tokens for vocab_size {vocab_size}")
        if not eos_token_ids or not all(0 <= int(t) < vocab_size for t in eos_token_ids):
            raise ParamError("eos_token_ids",
                             f"must be ids below vocab_size (got {eos_token_ids!r})")
        eos = {int(t) for t in eos_token_ids}
        pieces = tuple(b"" if b is None or i in eos else bytes(b)
                       for i, b in enumerate(token_bytes))
        first_ids: dict[bytes, int] = {}  # piece -> the first token that spells it
        for token_id, piece in enumerate(pieces):
            first_ids.setdefault(piece, token_id)
        chosen = []  # (sort key, token id, tier, class)
        for piece, token_id in first_ids.items():
            found = _classify(piece) if piece else None
            if found is not None:
                tier, rank, klass = found
                chosen.append((_order(piece, tier, rank), token_id, tier, klass))
        chosen.sort()
        first_ids.pop(b"", None)  # special tokens spell nothing
        spelled = ((_spell(text, first_ids), text) for text in _FORMAT_SAMPLES)
        samples = sorted(((t, text) for t, text in spelled if t), key=lambda s: len(s[0]))
        return cls(tuple(c[1] for c in chosen), tuple(c[2] for c in chosen),
                   tuple(c[3] for c in chosen), pieces + (b"",) * (vocab_size - len(pieces)),
                   tuple(sorted(eos)), (vocab_size + 31) // 32, tuple(samples))

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int,
                       eos_token_ids: Sequence[int]) -> CompletionVocab:
        """The candidates of a Hugging Face tokenizer (byte-exact token texts, ~0.5 s)."""
        import llguidance.hf

        lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size,
                                             eos_token=list(eos_token_ids))
        pieces = [SPECIAL + lltok.decode_bytes([i]) if lltok.is_special_token(i)
                  else lltok.decode_bytes([i]) for i in range(min(vocab_size, lltok.vocab_size))]
        return cls.from_token_bytes(pieces, vocab_size, eos_token_ids)
