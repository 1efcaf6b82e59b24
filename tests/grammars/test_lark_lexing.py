"""Lark grammars with a terminal that can never end are refused before llguidance reads
them (it would force the terminal's byte forever, holding the GIL); others pass untouched."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import llguidance
import pytest

from corral.grammars.lark_lexing import check_terminals_can_end
from corral.grammars.param_error import ParamError

from .test_lark_regex import CALL, CONFIG, DATE, SQL


@pytest.mark.parametrize(("grammar", "name"), [
    ("start: A B\nA: /a+/\nB: /a/\n", "A"),
    ('start: "p" A B | "q"\nA: /a+/\nB: /a/\n', "A"),  # only after "p": a first mask is fine
    ('start: "(" start ")" A B | "x"\nA: /a+/\nB: /a/\n', "A"),  # recursion is read too
    ("start: A B\nA: /(ab)+/\nB: /a/\n", "A"),
    ("start: A B\nA: /[a-z]+/\nB: /x/\n", "A"),
    ("start: item+\nitem: A B\nA: /[0-9]+/\nB: DIGIT\nDIGIT: /[0-9]/\n", "A"),
])
def test_a_terminal_that_swallows_its_follower_is_refused(grammar, name):
    with pytest.raises(ParamError, match=f"{name} can never end") as refused:
        check_terminals_can_end(grammar)
    assert refused.value.param == "structured_outputs.grammar"


@pytest.mark.parametrize("grammar", [
    SQL, CONFIG, DATE, CALL,
    'start: expr\nexpr: term (("+" | "-") term)*\nterm: NUMBER | "(" expr ")"\n'
    "NUMBER: /[0-9]{1,6}/\n",
    "start: A B\nA: /a+/\nB: /a|b/\n",  # "b" ends A
    'start: A " " B\nA: /a+/\nB: /a/\n',
    'start: KEY NAME\nKEY: "if"\nNAME: /[a-z]+/\n',  # "if" is complete: nothing continues it
    "start: A | A B\nA: /a+/\nB: /a/\n",  # A may end the output
    'start: X "a"\nX: /"[a-z]*"/\n',  # after its closing quote X takes nothing more
    '%ignore " "\nstart: A B\nA: /a+/\nB: /a/\n',  # directives: left to llguidance
])
def test_grammars_whose_terminals_can_end_pass(grammar):
    check_terminals_can_end(grammar)


def test_a_refused_grammar_has_no_complete_text_under_llguidance():
    # Where llguidance does not loop, the refused terminal still never ends: no text completes.
    tokenizer = llguidance.LLTokenizer("byte")
    grammar = llguidance.LLMatcher.grammar_from_lark("start: A B\nA: /[a-z]+/\nB: /x/\n")
    matcher = llguidance.LLMatcher(tokenizer, grammar)
    assert matcher.consume_tokens(list(b"abx"))
    assert not matcher.is_accepting()
    assert matcher.validate_tokens([tokenizer.eos_token]) == 0


_COMPILE = textwrap.dedent("""
    from corral.engine.model_files import default_model_dir
    from corral.engine.tokenizer import load_tokenizer
    from corral.grammars import GrammarCompiler
    from corral.engine.sampling_params import StructuredOutputsParams

    tokenizer = load_tokenizer(default_model_dir())
    compiler = GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    grammar = 'start: "p" A B | "q"\\nA: /a+/\\nB: /a/\\n'
    try:
        compiler.compile(StructuredOutputsParams(grammar=grammar))
    except ValueError as e:
        print("refused:", e.param, flush=True)
    compiler.shutdown()
""")


def test_the_compiler_refuses_it_at_once():
    # In a child process: without the check the compile never returns (nor lets Python run).
    done = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "refused: structured_outputs.grammar" in done.stdout, done.stderr[-2000:]
