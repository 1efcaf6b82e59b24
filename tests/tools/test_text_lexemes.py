"""Free-text lexemes written without `&`/`~` (so llguidance can add token slices in them)
accept exactly what the complement forms accept."""

from __future__ import annotations

import itertools
import re

import pytest

from corral.tools.lark_text import (
    avoiding_regex,
    nonempty_text_without,
    regex_escape,
    text_until,
    text_without,
)

from .grammar_check import GrammarCheck

MARKERS = ["<tool_call>", "</think>", "[TOOL_CALLS]", "<|channel|>", "ab", "a"]


def _texts(marker: str, max_len: int):
    alphabet = sorted(set(marker)) + ["x", "\n"]
    for length in range(max_len + 1):
        for chars in itertools.product(alphabet, repeat=length):
            yield "".join(chars)


@pytest.mark.parametrize("marker", MARKERS)
def test_avoiding_regexes_match_exactly_the_texts_without_the_marker(marker):
    plain = avoiding_regex(marker)
    until = text_until(marker)[1:-1]
    nonempty = nonempty_text_without(marker)[1:-1]
    max_len = 5 if len(set(marker)) > 4 else 7
    for text in _texts(marker, max_len):
        free = marker not in text
        assert bool(re.fullmatch(plain, text)) == free, text
        assert bool(re.fullmatch(nonempty, text)) == (free and text != ""), text
        assert bool(re.fullmatch(until, text + marker)) == free, text


def test_a_marker_whose_first_character_recurs_keeps_the_complement_form():
    assert avoiding_regex("<a<") is None
    assert "& ~" in text_without(["<a<"])
    assert "& ~" in text_until("<a<")
    assert "& ~" in text_without(["<tool_call>", "</tool_call>"])


CASES = ["", "plain text", "a < b and c <tool", "<tool_cal", "<<tool_call", "x\n<tool_call",
         "<tool_call>", "say <tool_call> here", "<tool_call><tool_call>", "ends <tool_call",
         "über <tool_call>", "<tool_call>x"]


@pytest.mark.parametrize("text", CASES)
def test_llguidance_reads_them_as_the_complement_forms(text, ll_tokenizer, hf_tokenizer):
    marker = "<tool_call>"
    quoted = regex_escape(marker)
    old_plain = f"/(?s:.*)/ & ~/(?s:.*){quoted}(?s:.*)/"
    pairs = [
        (f"start: PLAIN\nPLAIN: {old_plain}\n", f"start: PLAIN\nPLAIN: {text_without([marker])}\n"),
        (f'start: PLAIN | head "!"\nPLAIN: {old_plain}\nhead[lazy]: /(?s:.*){quoted}/\n',
         f'start: PLAIN | HEAD "!"\nPLAIN: {old_plain}\nHEAD: {text_until(marker)}\n'),
        (f"start: T\nT: /(?s:.+)/ & ~/(?s:.*){quoted}(?s:.*)/\n",
         f"start: T\nT: {nonempty_text_without(marker)}\n"),
    ]
    for old, new in pairs:
        old_check = GrammarCheck(ll_tokenizer, hf_tokenizer, "%llguidance {}\n" + old)
        new_check = GrammarCheck(ll_tokenizer, hf_tokenizer, "%llguidance {}\n" + new)
        for candidate in (text, text + "!"):
            assert new_check.accepts(candidate) == old_check.accepts(candidate), (new, candidate)
