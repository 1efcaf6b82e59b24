"""Feed text to an llguidance matcher built from a tool constraint's grammar."""

from __future__ import annotations

from dataclasses import dataclass

import llguidance


@dataclass
class MatchResult:
    is_consumed: bool  # every token of the text was allowed
    is_accepting: bool  # the grammar may end right after the text (EOS allowed)
    error: str


class GrammarCheck:
    """One grammar, validated and compiled once, run over many texts."""

    def __init__(self, ll_tokenizer, hf_tokenizer, grammar: str) -> None:
        self._template = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        assert not self._template.is_error(), self._template.get_error()
        self._hf_tokenizer = hf_tokenizer

    def match(self, text: str) -> MatchResult:
        """Tokenize `text` as the model would emit it and run it through the grammar."""
        matcher = self._template.deep_copy()
        ids = self._hf_tokenizer.encode(text, add_special_tokens=False)
        is_consumed = matcher.consume_tokens(ids)
        return MatchResult(is_consumed, is_consumed and matcher.is_accepting(),
                           matcher.get_error())

    def accepts(self, text: str) -> bool:
        """The text is allowed token by token and is a complete output."""
        return self.match(text).is_accepting


def match_text(ll_tokenizer, hf_tokenizer, grammar: str, text: str) -> MatchResult:
    return GrammarCheck(ll_tokenizer, hf_tokenizer, grammar).match(text)


def is_valid_output(ll_tokenizer, hf_tokenizer, grammar: str, text: str) -> bool:
    return GrammarCheck(ll_tokenizer, hf_tokenizer, grammar).accepts(text)
