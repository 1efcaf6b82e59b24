"""Structured outputs: compile JSON Schema / regex / choice / Lark constraints into matchers
that fill packed token bitmasks; the grammar registry.

    compiler = GrammarCompiler(tokenizer, vocab_size, eos_token_ids)
    compiled = compiler.compile(StructuredOutputsParams(json=schema))
    matcher = compiled.matcher()          # one per sequence
    matcher.fill_bitmask(bitmask, row); matcher.accept_token(token_id)
    fill_bitmasks(matchers, bitmask); accept_tokens(matchers, token_ids)  # batched
"""

from corral.grammars.batch import accept_tokens
from corral.grammars.bitmask import fill_bitmasks
from corral.grammars.compiler import GrammarCompiler
from corral.grammars.draft_masks import fill_bitmasks_with_drafts
from corral.grammars.matcher import CompiledGrammar, Matcher
from corral.grammars.registry import GrammarRegistry, RegisteredGrammar
from corral.grammars.spec import GrammarSpec, normalize_spec

__all__ = [
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarRegistry",
    "GrammarSpec",
    "Matcher",
    "RegisteredGrammar",
    "accept_tokens",
    "fill_bitmasks",
    "fill_bitmasks_with_drafts",
    "normalize_spec",
]
