"""Tokenizer loading and the facts the engine needs from it."""

from __future__ import annotations

import os
from typing import Any


def load_tokenizer(path: str | os.PathLike) -> Any:
    """A transformers (fast) tokenizer with the model's chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def eos_token_ids(tokenizer: Any, hf_config: Any) -> list[int]:
    """Every token id that ends a completion: the config's EOS ids and the tokenizer's."""
    ids: list[int] = []
    configured = getattr(hf_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif isinstance(configured, (list, tuple)):
        ids.extend(int(t) for t in configured)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return sorted(set(ids))


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a text prompt, with the tokenizer's special tokens (BOS) unless the text
    already starts with BOS (a rendered chat template)."""
    bos = tokenizer.bos_token
    add_special = not (bos and prompt.startswith(bos))
    return tokenizer.encode(prompt, add_special_tokens=add_special)
