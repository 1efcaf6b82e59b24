"""Token id -> bytes for byte-level BPE tokenizers, so that text is made by joining bytes.

A byte-level BPE tokenizer (GPT-2, Llama 3, Qwen, SmolLM2) writes every byte as one of 256
printable characters; its decode is the UTF-8 decoding of the concatenated bytes of the
tokens. With the table, an incremental detokenizer appends a token's bytes to a streaming
UTF-8 decoder (well under a microsecond) instead of decoding windows of tokens twice per
token (~10 us). The table is used only where it gives exactly the tokenizer's own decode:
every added token and a seeded sample of token sequences are checked against it.
"""

from __future__ import annotations

import random
import threading
from typing import Any

_NUM_CHECKED_SEQUENCES = 256
_tables: dict[tuple[int, bool], tuple[Any, list[bytes] | None]] = {}
_lock = threading.Lock()


def byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet: character -> the byte it stands for. Printable Latin-1
    bytes stand for themselves; the others are moved to code points from 256 up."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    alphabet = {chr(b): b for b in kept}
    moved = 0
    for b in range(256):
        if b not in kept:
            alphabet[chr(256 + moved)] = b
            moved += 1
    return alphabet


def token_bytes(tokenizer: Any, skip_special_tokens: bool) -> list[bytes] | None:
    """Each token id's bytes (b"" for special tokens skipped), or None when `tokenizer` is
    not a byte-level BPE tokenizer whose decode is exactly that (built once per tokenizer
    and setting)."""
    key = (id(tokenizer), skip_special_tokens)
    with _lock:
        found = _tables.get(key)
        if found is not None and found[0] is tokenizer:
            return found[1]
    table = _build(tokenizer, skip_special_tokens)
    with _lock:
        _tables[key] = (tokenizer, table)  # holds the tokenizer: its id is never reused
    return table


def _build(tokenizer: Any, skip_special_tokens: bool) -> list[bytes] | None:
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or type(backend.decoder).__name__ != "ByteLevel":
        return None
    alphabet = byte_level_alphabet()
    vocab = backend.get_vocab(with_added_tokens=False)
    added = backend.get_added_tokens_decoder()
    size = max([*vocab.values(), *added.keys()], default=-1) + 1
    table = [b""] * size
    try:
        for piece, token_id in vocab.items():
            table[token_id] = bytes(alphabet[ch] for ch in piece)
    except KeyError:
        return None
    for token_id, token in added.items():
        table[token_id] = b"" if token.special and skip_special_tokens else \
            token.content.encode()
    return table if _agrees(tokenizer, table, list(added), skip_special_tokens) else None


def _agrees(tokenizer: Any, table: list[bytes], added_ids: list[int],
            skip_special_tokens: bool) -> bool:
    """Whether joining bytes gives the tokenizer's decode: each added token alone, and
    sequences of random tokens (added ones among them)."""
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def joined(ids: list[int]) -> str:
        return b"".join(table[i] for i in ids).decode("utf-8", "replace")

    rng = random.Random(0)
    samples = [[i] for i in added_ids]
    for _ in range(_NUM_CHECKED_SEQUENCES):
        ids = [rng.randrange(len(table)) for _ in range(rng.randint(1, 12))]
        if added_ids and rng.random() < 0.3:
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(added_ids))
        samples.append(ids)
    return all(decode(ids) == joined(ids) for ids in samples)
