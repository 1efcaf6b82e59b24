"""`accept_tokens`: one batched accept per step leaves every matcher as `accept_token` would."""

from __future__ import annotations

import pytest
import torch

from corral.engine.logits_process import allocate_bitmask
from corral.engine.sampling_params import StructuredOutputsParams as S
from corral.grammars import accept_tokens
from corral.grammars.llguidance_backend import LLGuidanceMatcher

from .conftest import EOS_IDS, VOCAB_SIZE

EOS = EOS_IDS[0]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
# (spec, text fed token by token; "!" marks a token the grammar refuses)
ROWS = [
    (S(json=SCHEMA), '{"name":"Bo","age":30}'),
    (S(json=SCHEMA), '{"name":"Al","age":!'),
    (S(choice=["yes", "no"]), "yes"),  # stops after "yes": later EOS have no history entry
    (S(regex=r"[a-z]+"), "abc!"),
    (S(json=SCHEMA, backend="outlines"), '{"name":"Bo"'),
    (S(json=SCHEMA, backend="xgrammar"), '{"name":"Bo","age":30}'),
    (S(json=SCHEMA, backend="xgrammar"), '{"name":"Al","age":!'),
    (S(choice=["yes", "no"], backend="xgrammar"), "yes"),
    (S(regex=r"[a-z]+", backend="xgrammar"), "abc"),
]


def token_rows(tokenizer, width: int) -> list[list[int]]:
    """Each row's tokens, padded with EOS to `width` (so some rows see EOS past their end)."""
    bad = tokenizer.encode("!", add_special_tokens=False)[0]
    rows = []
    for _, text in ROWS:
        ids = []
        for piece in text.split("!"):
            ids += tokenizer.encode(piece, add_special_tokens=False) if piece else []
            ids.append(bad)
        ids = ids[:-1]
        rows.append((ids + [EOS] * width)[:width])
    return rows


def state(matcher) -> tuple:
    mask = allocate_bitmask(1, VOCAB_SIZE)
    matcher.fill_bitmask(mask, 0)
    return (matcher.num_accepted, matcher.is_error(), matcher.is_terminated(),
            matcher.can_end(), mask)


def assert_same(batched, single) -> None:
    for a, b in zip(batched, single, strict=True):
        sa, sb = state(a), state(b)
        assert sa[:4] == sb[:4]
        assert torch.equal(sa[4], sb[4])


@pytest.mark.parametrize("threads", ["1", "4"])  # row by row; llguidance's parallel call
def test_accept_tokens_equals_accept_token_row_by_row(compiler, hf_tokenizer, monkeypatch,
                                                      threads):
    monkeypatch.setenv("CORRAL_MASK_THREADS", threads)
    compiled = [compiler.compile(spec) for spec, _ in ROWS]
    batched = [c.matcher() for c in compiled]
    single = [c.matcher() for c in compiled]
    width = 14
    tokens = token_rows(hf_tokenizer, width)
    for step in range(width):
        column = [row[step] for row in tokens]
        results = accept_tokens(batched, column)
        expected = [m.accept_token(t) for m, t in zip(single, column, strict=True)]
        assert results == expected, step
        assert_same(batched, single)
    assert any(m.is_error() for m in batched) and any(m.is_terminated() for m in batched)
    for back in (1, 3):
        for a, b in zip(batched, single, strict=True):
            if isinstance(a, LLGuidanceMatcher) and a.is_error():
                continue  # llguidance stays in error (see `Matcher`)
            n = min(back, a.num_accepted)
            a.rollback(n)
            b.rollback(n)
        assert_same(batched, single)


def test_accept_tokens_batches_an_xgrammar_walk(compiler, hf_tokenizer):
    text = '{"name":"Bo","age":30}'
    ids = hf_tokenizer.encode(text, add_special_tokens=False) + [EOS]
    matchers = [compiler.compile(S(json=SCHEMA, backend="xgrammar")).matcher() for _ in range(4)]
    for token_id in ids:
        assert accept_tokens(matchers, [token_id] * 4) == [True] * 4
    assert all(m.is_terminated() and m.num_accepted == len(ids) for m in matchers)
    matchers[0].rollback(len(ids))
    assert matchers[0].num_accepted == 0 and not matchers[0].is_terminated()


def test_accept_tokens_checks_lengths(compiler):
    matcher = compiler.compile(S(regex="a")).matcher()
    with pytest.raises(ValueError, match="token_ids"):
        accept_tokens([matcher], [1, 2])
    assert accept_tokens([], []) == []
