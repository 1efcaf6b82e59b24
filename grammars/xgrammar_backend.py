"""The xgrammar backend: JSON Schema, json_object, regex and choice as xgrammar matchers.

Exact or refused: schemas pass `check_xgrammar_schema` (which refuses what xgrammar would
ignore and rewrites patterns into its regex dialect), regexes are translated by
`to_xgrammar_regex`, JSON is compact (separators "," and ":", no free whitespace; xgrammar's
built-in any-value rules, which keep ", ", are patched in its EBNF text). Lark
grammars are refused: xgrammar reads Lark terminals as context-free rules, without Lark's
longest-match lexer, so it accepts texts Lark rejects (`A: /a+/` then `B: /a/` takes "aa").
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import llguidance
import xgrammar

from corral.grammars.errors import grammar_error, json_schema_error
from corral.grammars.param_error import ParamError
from corral.grammars.schema_rewrite import prepared_schema
from corral.grammars.spec import GrammarSpec
from corral.grammars.xgrammar_matcher import XGrammarMatcher, XGrammarVocab
from corral.grammars.xgrammar_regex import to_xgrammar_regex
from corral.grammars.xgrammar_schema_check import check_xgrammar_schema

_LOG_PREFIX = re.compile(r"\[[0-9:]+\] \S+:[0-9]+: ")
# The any-value rules xgrammar builds in keep its default ", " separator whatever the options.
_SPACED_ANY_RULES = {
    'basic_array_items ::= ((", " basic_any))': 'basic_array_items ::= (("," basic_any))',
    'basic_object_properties ::= ((", " basic_string ":" basic_any))':
        'basic_object_properties ::= (("," basic_string ":" basic_any))',
}


def tokenizer_info(tokenizer, vocab_size: int,
                   eos_token_ids: Sequence[int]) -> xgrammar.TokenizerInfo:
    """xgrammar's view of a Hugging Face tokenizer, `vocab_size` wide (the logits width).

    Special tokens get no text, so that xgrammar never lets one stand for its literal
    spelling (`<|im_start|>` inside a JSON string); the EOS ids are the stop tokens.
    """
    detected = xgrammar.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=list(eos_token_ids))
    encoded = [""] * vocab_size  # [vocab_size] token spelling in the tokenizer's encoding
    for piece, token_id in tokenizer.get_vocab().items():
        if token_id < vocab_size:
            encoded[token_id] = piece
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False) and token_id < vocab_size:
            encoded[token_id] = ""
    return xgrammar.TokenizerInfo.from_vocab_and_metadata(encoded, detected.dump_metadata())


class XGrammarBackend:
    """Compiles json / json_object / regex / choice specs with xgrammar for one tokenizer."""

    name = "xgrammar"

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int],
                 json_whitespace: str | None = None) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.json_whitespace = json_whitespace
        self.info = tokenizer_info(tokenizer, vocab_size, self.eos_token_ids)
        self.vocab = XGrammarVocab(tokenizer, self.info, self.eos_token_ids)
        threads = max(1, min(8, os.cpu_count() or 1))
        # Corral's compiler caches results; xgrammar's own cache would hold them twice.
        self._compiler = xgrammar.GrammarCompiler(self.info, max_threads=threads,
                                                  cache_enabled=False)

    def grammar(self, spec: GrammarSpec) -> xgrammar.Grammar:
        """The xgrammar grammar for `spec` (no tokenizer needed); ValueError if refused."""
        if spec.kind in ("json", "json_object"):
            return self._json_grammar(spec)
        if spec.kind in ("regex", "choice"):
            _check_rust_regex(spec)
            try:
                regex = to_xgrammar_regex(spec.text)
                return xgrammar.Grammar.from_regex(regex)
            except ValueError as e:
                raise grammar_error(spec, f"error: {e}") from None
            except RuntimeError as e:
                raise grammar_error(spec, f"error: {_without_log_prefix(e)}") from None
        if spec.kind == "grammar":
            raise ParamError(
                "structured_outputs.grammar", "the xgrammar backend cannot compile Lark grammars "
                "exactly (it reads terminals as context-free rules, without Lark's "
                "longest-match lexer); use backend='llguidance'")
        raise ParamError(
            f"structured_outputs.{spec.kind}", "not a kind the xgrammar backend compiles")

    def validate(self, spec: GrammarSpec) -> None:
        """Check `spec` without building token masks; ValueError naming the problem."""
        self.grammar(spec)

    def compile(self, spec: GrammarSpec):
        """A factory of fresh matchers for `spec`; ValueError if it cannot be enforced."""
        grammar = self.grammar(spec)
        try:
            compiled = self._compiler.compile_grammar(grammar)
        except RuntimeError as e:
            raise _refusal(spec, _without_log_prefix(e)) from None
        return lambda: XGrammarMatcher(compiled, self.vocab)

    def _json_grammar(self, spec: GrammarSpec) -> xgrammar.Grammar:
        if self.json_whitespace is not None:
            raise ParamError(f"structured_outputs.{spec.kind}", "the xgrammar backend writes "
                             "only compact JSON (json_whitespace must be None)")
        text = '{"type":"object"}' if spec.kind == "json_object" else spec.text
        schema = check_xgrammar_schema(prepared_schema(text, self.name), json.loads(text))
        try:
            grammar = xgrammar.Grammar.from_json_schema(
                json.dumps(schema), any_whitespace=False, separators=(",", ":"),
                strict_mode=False)
        except RuntimeError as e:
            raise json_schema_error(self.name, _without_log_prefix(e)) from None
        return _compact_any_values(grammar)


def _compact_any_values(grammar: xgrammar.Grammar) -> xgrammar.Grammar:
    """`grammar` with the built-in any-value rules using "," like the rest of the JSON."""
    text = str(grammar)
    patched = text
    for spaced, compact in _SPACED_ANY_RULES.items():
        patched = patched.replace(spaced, compact)
    if patched == text:
        return grammar
    return xgrammar.Grammar.from_ebnf(patched, root_rule_name="root")


def _check_rust_regex(spec: GrammarSpec) -> None:
    """The spec's regex must be valid Rust syntax (the dialect specs are written in)."""
    grammar = llguidance.LLMatcher.grammar_from_regex(spec.text)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None)
    if is_error:
        raise grammar_error(spec, messages[0] if messages else "invalid regex")


def _without_log_prefix(error: Exception) -> str:
    """xgrammar's message without its log prefix (`[12:00:00] /project/cpp/x.cc:12: `)."""
    return _LOG_PREFIX.sub("", str(error)).strip()


def _refusal(spec: GrammarSpec, message: str) -> ValueError:
    if spec.kind in ("json", "json_object"):
        return json_schema_error("xgrammar", message)
    return grammar_error(spec, message)
