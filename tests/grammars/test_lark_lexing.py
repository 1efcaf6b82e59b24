"""Lark grammars on which llguidance would force bytes forever are refused before it reads
them (the loop holds the GIL); others pass untouched."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import llguidance
import pytest

from corral.grammars.lark_lexing import check_no_forced_loop
from corral.grammars.param_error import ParamError

from .test_lark_regex import CALL, CONFIG, DATE, SQL

LOOPS = [
    ("start: A B\nA: /a+/\nB: /a/\n", "A"),
    ('start: "p" A B | "q"\nA: /a+/\nB: /a/\n', "A"),  # only after "p": a first mask is fine
    ('start: "(" start ")" A B | "x"\nA: /a+/\nB: /a/\n', "A"),  # recursion is read too
    ("start: A B\nA: /(ab)+/\nB: /a/\n", "A"),  # a cycle of two forced bytes
    ("start: A B\nA: /x|a+/\nB: /a/\n", "A"),  # one branch of it
    ("start: C B\nC: A\nA: /a+/\nB: /a/\n", "C"),  # a terminal made of another
    ("start: A B\nA: /a{2,}/\nB: /a/\n", "A"),
]


@pytest.mark.parametrize(("grammar", "name"), LOOPS)
def test_a_terminal_that_can_hold_the_lexer_forever_is_refused(grammar, name):
    with pytest.raises(ParamError, match=f"{name} can hold the lexer forever") as refused:
        check_no_forced_loop(grammar)
    assert refused.value.param == "structured_outputs.grammar"


@pytest.mark.parametrize("grammar", [
    SQL, CONFIG, DATE, CALL,
    'start: expr\nexpr: term (("+" | "-") term)*\nterm: NUMBER | "(" expr ")"\n'
    "NUMBER: /[0-9]{1,6}/\n",
    "start: A B\nA: /a+/\nB: /a|b/\n",  # "b" ends A
    'start: A " " B\nA: /a+/\nB: /a/\n',
    '%ignore " "\nstart: A B\nA: /a+/\nB: /a/\n',  # " " may come between: two bytes allowed
    'WS: " "\n%ignore WS\nstart: A B\nA: /[a ]+/\nB: /a/\n',  # "a" and " " both continue A
    '%import common.WS\n%ignore WS\nstart: A B\nA: /a+/\nB: /a/\n',  # whitespace may follow
    "start: A B\nA: /a+b?/\nB: /a/\n",  # "ab" then "a" completes it
    "start: A B\nA: /a{1,3}/\nB: /a/\n",  # forced, but only up to "aaaa"
    'start: A B\nA: /[^"]{0,5000}x/\nB: /y/\n',  # too long to write out: no verdict
    "start: A B\nA: /[a-z]+/\nB: /x/\n",  # A swallows "x", but 26 bytes stay allowed
    'start: KEY NAME\nKEY: "if"\nNAME: /[a-z]+/\n',
    "start: A | A B\nA: /a+/\nB: /a/\n",  # A may end the output: the parser accepts there
    'start: A " " B\nA: /a+/\nB: /a/\nunused: A B\n',  # a rule the start never reaches
    '%declare X\nstart: A B\nA: /a+/\nB: /a/\n',  # other directives: left to llguidance
])
def test_grammars_without_a_forced_loop_pass(grammar):
    check_no_forced_loop(grammar)


@pytest.mark.parametrize("grammar", [
    "start: A B\nA: /[a-z]+/\nB: /x/\n",
    "start: A B\nA: /a+b?/\nB: /a/\n",
    "start: A B\nA: /a{1,3}/\nB: /a/\n",
])
def test_llguidance_answers_on_the_grammars_that_pass(grammar):
    # What passes does not loop: llguidance computes its masks along a long text.
    tokenizer = llguidance.LLTokenizer("byte")
    matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar))
    for byte in b"a" * 50:
        assert matcher.compute_bitmask() is not None
        if not matcher.consume_token(byte):
            break


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
