"""Regular Lark grammars move to an outlines-core index: the regex `lark_regex` proves has
exactly the grammar's language under llguidance's lexer, and grammars it cannot prove stay."""

from __future__ import annotations

import random
import time

import lark
import pytest
import torch

from corral.engine.logits_process import allocate_bitmask
from corral.engine.sampling_params import StructuredOutputsParams as S
from corral.grammars import GrammarCompiler
from corral.grammars.lark_regex import _Converter, _NotRegular, lark_regex
from corral.grammars.outlines_backend import OutlinesMatcher

from .conftest import EOS_IDS, VOCAB_SIZE

SQL = ('start: "SELECT " cols " FROM " NAME (" WHERE " cond)? ";"\n'
       'cols: NAME (", " NAME)* | "*"\ncond: NAME " " OP " " VALUE\n'
       'OP: "=" | ">" | "<" | ">=" | "<="\nNAME: /[a-z_][a-z0-9_]{0,20}/\n'
       "VALUE: /[0-9]{1,6}/ | /'[a-zA-Z ]{0,20}'/\n")
CONFIG = ('start: line+\nline: KEY "=" VALUE "\\n"\nKEY: /[a-z_]{1,16}/\n'
          'VALUE: /[0-9]{1,5}/ | "true" | "false" | /"[a-zA-Z0-9. ]{0,30}"/\n')
DATE = 'start: YEAR "-" MONTH "-" DAY\nYEAR: DIGIT~4\nMONTH: "0" "1".."9" | "1" "0".."2"\n' \
       'DAY: /[0-2][0-9]|3[01]/\nDIGIT: "0".."9"\n'
CALL = ('start: name "(" [arg ("," arg)~0..2] ")"\nname: /[a-z]{1,8}/\n'
        'arg: /[0-9]{1,4}/ | ESCAPED\nESCAPED: "\\"" /[a-z ]{0,6}/ "\\""\n')
REGULAR = [SQL, CONFIG, DATE, CALL]


@pytest.mark.parametrize(("grammar", "reason"), [
    ('start: "(" start ")" | "x"\n', "recursion"),
    ("start: A B\nA: /a+/\nB: /a|b/\n", "A may run on into A"),
    ("start: W+\nW: /[a-z]+/\n", "W may run on into W"),
    ('start: KEY NAME\nKEY: "if"\nNAME: /[a-z]+/\n', "KEY may run on into"),
    ('%ignore " "\nstart: "a"\n', "a directive"),
    ('start: "a"i\n', "a flag on a literal"),
    ("start: A\nA: /x*/\n", "matches the empty text"),
    ("start: A\nA.2: /x/\n", "a terminal priority"),
    ("start: A\nA: /\\bx/\n", "word boundaries"),
])
def test_grammars_without_a_provable_regex_have_none(grammar, reason):
    assert lark_regex(grammar) is None
    with pytest.raises(_NotRegular, match=reason):
        _Converter(grammar).regex()


def test_a_terminal_that_cannot_run_on_converts():
    assert lark_regex('start: A " " B\nA: /a+/\nB: /a/\n') == r"a+\x{20}a"
    assert lark_regex('start: W (" " W)*\nW: /[a-z]+/\n') == r"[a-z]+(?:\x{20}[a-z]+)*"
    assert lark_regex('start: x~2..3 [y]\nx: "ab" | "c"\ny: "0".."9"\n') == \
        "(?:ab|c){2,3}[0-9]?"
    assert lark_regex("start: not lark at all ]") is None


def allowed(bitmask: torch.Tensor) -> list[int]:
    bits = (bitmask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return [t for t in torch.nonzero(bits.flatten()).flatten().tolist() if t < VOCAB_SIZE]


@pytest.fixture()
def fresh_compiler(hf_tokenizer):
    compiler = GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS)
    yield compiler
    compiler.shutdown()


def upgraded(compiled, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while compiled.backend != "outlines" and time.monotonic() < deadline:
        time.sleep(0.02)
    return compiled.backend == "outlines"


@pytest.mark.parametrize("grammar", REGULAR, ids=["sql", "config", "date", "call"])
def test_regular_lark_grammars_move_to_an_index_with_the_same_language(
        fresh_compiler, hf_tokenizer, grammar):
    assert lark_regex(grammar) is not None
    compiled = fresh_compiler.compile(S(grammar=grammar))
    assert upgraded(compiled)
    reference = fresh_compiler.compile(S(grammar=grammar, backend="llguidance"))
    assert reference.backend == "llguidance"
    parser = lark.Lark(grammar, parser="earley", lexer="dynamic")
    rng = random.Random(grammar)
    ours, theirs = allocate_bitmask(1, VOCAB_SIZE), allocate_bitmask(1, VOCAB_SIZE)
    ended = 0
    for walk in range(16):
        # Odd walks follow the index's masks, even ones llguidance's; a finished text of
        # either must be in the grammar's language and accepted by the other.
        matcher = compiled.matcher() if walk % 2 else reference.matcher()
        assert isinstance(compiled.matcher(), OutlinesMatcher)
        token_ids: list[int] = []
        for _step in range(120):
            matcher.fill_bitmask(ours, 0)
            choices = allowed(ours)
            ends = [t for t in choices if t in EOS_IDS]
            token = ends[0] if ends and rng.random() < 0.3 else rng.choice(choices)
            assert matcher.accept_token(token)
            if token in EOS_IDS:
                break
            token_ids.append(token)
        else:
            continue
        ended += 1
        text = hf_tokenizer.decode(token_ids)
        parser.parse(text)  # the text is in the grammar's language
        other = reference.matcher() if walk % 2 else compiled.matcher()
        retokenized = hf_tokenizer.encode(text, add_special_tokens=False)
        assert all(other.accept_token(t) for t in retokenized), text
        assert other.can_end(), text
    assert ended >= 6
    # Along a walk, every token llguidance allows starts a token the index allows
    # (llguidance also drops tokens that could only go on in a non-canonical tokenization).
    matcher, llg = compiled.matcher(), reference.matcher()
    for _step in range(60):
        matcher.fill_bitmask(ours, 0)
        llg.fill_bitmask(theirs, 0)
        mine = allowed(ours)
        pieces = hf_tokenizer.convert_ids_to_tokens(mine)
        for token in set(allowed(theirs)) - set(mine):
            piece = hf_tokenizer.convert_ids_to_tokens(token)
            assert any(p.startswith(piece) for p in pieces), piece
        token = rng.choice(allowed(theirs))
        if token in EOS_IDS:
            break
        assert matcher.accept_token(token) and llg.accept_token(token)


def test_recursive_and_run_on_grammars_stay_on_llguidance(fresh_compiler, hf_tokenizer):
    cheap = fresh_compiler.compile(S(grammar=DATE))
    recursive = fresh_compiler.compile(S(grammar='start: "(" start ")" | "x"\n'))
    run_on = fresh_compiler.compile(S(grammar="start: A B\nA: /a+/\nB: /a|b/\n"))
    assert upgraded(cheap)  # the upgrade thread has run everything queued before it
    assert recursive.backend == "llguidance" and run_on.backend == "llguidance"
    a, b = (hf_tokenizer.convert_tokens_to_ids(piece) for piece in ("a", "b"))
    matcher = run_on.matcher()
    assert matcher.accept_token(a) and matcher.accept_token(a)
    assert not matcher.can_end()  # the lexer reads "aa" as one A (a regex would end here)
    assert matcher.accept_token(b) and matcher.can_end()
