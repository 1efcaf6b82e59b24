"""Structured outputs: compile JSON Schema / regex / choice / Lark constraints into matchers
that fill packed token bitmasks; the grammar registry.

    compiler = GrammarCompiler(tokenizer, vocab_size, eos_token_ids)
    compiled = compiler.compile(StructuredOutputsParams(json=schema))
    matcher = compiled.matcher()          # one per sequence
    matcher.fill_bitmask(bitmask, row); matcher.accept_token(token_id)
    fill_bitmasks(matchers, bitmask); accept_tokens(matchers, token_ids)  # batched
"""

from __future__ import annotations

import importlib
from typing import Any

from corral.grammars.params import StructuredOutputsParams

# The rest loads on first use: the backends' native libraries take a while to import, and
# the engine's request types (which need only `StructuredOutputsParams`) import this package.
_LAZY = {
    "accept_tokens": "corral.grammars.batch",
    "fill_bitmasks": "corral.grammars.bitmask",
    "GrammarCompiler": "corral.grammars.compiler",
    "fill_bitmasks_with_drafts": "corral.grammars.draft_masks",
    "CompiledGrammar": "corral.grammars.matcher",
    "Matcher": "corral.grammars.matcher",
    "GrammarRegistry": "corral.grammars.registry",
    "RegisteredGrammar": "corral.grammars.registry",
    "GrammarSpec": "corral.grammars.spec",
    "normalize_spec": "corral.grammars.spec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral.grammars' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarRegistry",
    "GrammarSpec",
    "Matcher",
    "RegisteredGrammar",
    "StructuredOutputsParams",
    "accept_tokens",
    "fill_bitmasks",
    "fill_bitmasks_with_drafts",
    "normalize_spec",
]
