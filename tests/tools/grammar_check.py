"""Feed text to an llguidance matcher built from a tool constraint's grammar."""

from __future__ import annotations

from dataclasses import dataclass

import llguidance


@dataclass
class MatchResult:
    is_consumed: bool  # every token of the text was allowed
    is_accepting: bool  # the grammar may end right after the text (EOS allowed)
    error: str


def match_text(ll_tokenizer, hf_tokenizer, grammar: str, text: str) -> MatchResult:
    """Tokenize `text` as the model would emit it and run it through the grammar."""
    error = llguidance.LLMatcher.validate_grammar(grammar, ll_tokenizer)
    assert error == "", error
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
    ids = hf_tokenizer.encode(text, add_special_tokens=False)
    is_consumed = matcher.consume_tokens(ids)
    return MatchResult(is_consumed, is_consumed and matcher.is_accepting(), matcher.get_error())


def is_valid_output(ll_tokenizer, hf_tokenizer, grammar: str, text: str) -> bool:
    """The text is allowed token by token and is a complete output."""
    return match_text(ll_tokenizer, hf_tokenizer, grammar, text).is_accepting
