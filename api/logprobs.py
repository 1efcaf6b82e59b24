"""Token log-probabilities in OpenAI's shapes (chat `logprobs.content`, legacy completions).

`TokenTexts` gives each token id its text and its exact bytes: for byte-level BPE
tokenizers the bytes come from the token's byte-level alphabet, so a token holding half of
a multi-byte UTF-8 character still reports its true bytes.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from corral.engine.outputs import TokenLogprob

from .chat_response import ChatTokenLogprob, TopLogprob
from .completion_protocol import CompletionLogprobs

LOGPROB_FLOOR = -9999.0


def clamp(logprob: float) -> float:
    """Finite log-probabilities only; OpenAI's floor is -9999.0."""
    if math.isnan(logprob) or logprob < LOGPROB_FLOOR:
        return LOGPROB_FLOOR
    return float(logprob)


class TokenTexts:
    """Text and bytes of single tokens, cached."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._byte_decoder: dict[str, int] | None = None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        if decoder is not None and type(decoder).__name__ == "ByteLevel":
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self.bytes_of = lru_cache(maxsize=65536)(self._bytes_of)

    def _bytes_of(self, token_id: int) -> bytes:
        if self._byte_decoder is not None:
            piece = self._tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and all(c in self._byte_decoder for c in piece):
                return bytes(self._byte_decoder[c] for c in piece)
        return self._tokenizer.decode([token_id]).encode("utf-8")

    def text(self, token_id: int) -> str:
        return self.bytes_of(token_id).decode("utf-8", errors="replace")


def chat_logprobs(texts: TokenTexts, logprobs: list[TokenLogprob]) -> list[ChatTokenLogprob]:
    """Chat-completions `logprobs.content` entries for these tokens."""
    result = []
    for lp in logprobs:
        raw = texts.bytes_of(lp.token_id)
        tops = [
            TopLogprob(token=texts.text(tid), logprob=clamp(v), bytes=list(texts.bytes_of(tid)))
            for tid, v in lp.top_logprobs
        ]
        result.append(ChatTokenLogprob(
            token=raw.decode("utf-8", errors="replace"),
            logprob=clamp(lp.logprob),
            bytes=list(raw),
            top_logprobs=tops,
        ))
    return result


def completion_logprobs(texts: TokenTexts, logprobs: list[TokenLogprob],
                        text_offset: int) -> CompletionLogprobs:
    """Legacy completions `logprobs`: tokens, their logprobs, top alternatives, offsets."""
    out = CompletionLogprobs()
    offset = text_offset
    for lp in logprobs:
        token = texts.text(lp.token_id)
        out.tokens.append(token)
        out.token_logprobs.append(clamp(lp.logprob))
        out.top_logprobs.append({texts.text(tid): clamp(v) for tid, v in lp.top_logprobs})
        out.text_offset.append(offset)
        offset += len(token)
    return out
