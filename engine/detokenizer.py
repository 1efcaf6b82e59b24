"""Incremental detokenization, right for multi-byte UTF-8 characters split across tokens."""

from __future__ import annotations

import codecs
from typing import Any

from .token_bytes import token_bytes

_REPLACEMENT = "\ufffd"
_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    """Turns a growing list of token ids into a growing string.

    For byte-level BPE tokenizers (see `token_bytes.py`) each new token's bytes go through a
    streaming UTF-8 decoder, which holds back an incomplete character until its last byte.
    Otherwise each step decodes a short window (a few tokens of context plus the new ones)
    and emits only the characters past the context; a window that ends in an incomplete
    UTF-8 sequence (decoded as U+FFFD) is held back until the following tokens complete it.
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool):
        self.tokenizer = tokenizer
        # The fast tokenizer's backend decodes without transformers' per-call conversions.
        self._backend = getattr(tokenizer, "_tokenizer", None)
        if getattr(tokenizer, "clean_up_tokenization_spaces", False):
            self._backend = None
        self.skip_special_tokens = skip_special_tokens
        self.text = ""
        self._read_offset = len(prompt_token_ids)
        self._prefix_offset = max(0, self._read_offset - _CONTEXT_TOKENS)
        self._bytes = token_bytes(tokenizer, skip_special_tokens)
        self._utf8 = _utf8_decoder() if self._bytes is not None else None

    def _decode(self, token_ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(token_ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)

    def update(self, all_token_ids: list[int]) -> str:
        """Take the full token list (prompt + output); return the text newly completed."""
        return self._update_to(all_token_ids, len(all_token_ids))

    def _update_to(self, all_token_ids: list[int], end: int) -> str:
        """`update` with the first `end` tokens of `all_token_ids`."""
        if self._utf8 is not None:
            table, size = self._bytes, len(self._bytes)
            data = b"".join(table[t] if 0 <= t < size else b""
                            for t in all_token_ids[self._read_offset:end])
            self._read_offset = end
            new_text = self._utf8.decode(data)
            self.text += new_text
            return new_text
        prefix_text = self._decode(all_token_ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(all_token_ids[self._prefix_offset : end])
        if len(full_text) <= len(prefix_text) or full_text.endswith(_REPLACEMENT):
            return ""
        new_text = full_text[len(prefix_text) :]
        self._prefix_offset = max(self._read_offset, end - _CONTEXT_TOKENS)
        self._read_offset = end
        self.text += new_text
        return new_text

    def reset_to(self, all_token_ids: list[int], num_prompt_tokens: int) -> None:
        """Recompute the text of the output tokens (after a rollback) as if they had been
        appended one at a time: the same text, an incomplete last character held back
        (decoding them at once would keep its U+FFFD in the text for good)."""
        self.text = ""
        self._read_offset = num_prompt_tokens
        self._prefix_offset = max(0, num_prompt_tokens - _CONTEXT_TOKENS)
        if self._utf8 is not None:
            self._utf8 = _utf8_decoder()
            self._update_to(all_token_ids, len(all_token_ids))
            return
        for end in range(num_prompt_tokens + 1, len(all_token_ids) + 1):
            self._update_to(all_token_ids, end)


def _utf8_decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")("replace")


def final_text(tokenizer: Any, prompt_token_ids: list[int], output_token_ids: list[int],
               skip_special_tokens: bool) -> str:
    """The text an `IncrementalDetokenizer` fed the output one token at a time would end
    with, decoded at once (the prompt's last tokens as context)."""
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids, skip_special_tokens)
    all_token_ids = [*prompt_token_ids, *output_token_ids]
    detokenizer.update(all_token_ids)
    if not detokenizer.text and output_token_ids:  # ends inside a character: replay
        detokenizer.reset_to(all_token_ids, len(prompt_token_ids))
    return detokenizer.text


class NoDetokenizer:
    """The detokenizer of a sequence whose text is not wanted here (`detokenize=False`:
    the API process detokenizes it, or the caller wants token ids only): no text."""

    text = ""

    def update(self, all_token_ids: list[int]) -> str:
        return ""

    def reset_to(self, all_token_ids: list[int], num_prompt_tokens: int) -> None:
        pass
