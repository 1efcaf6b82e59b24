"""Matcher behaviour: masks agree with accept_token, EOS, rollback, forced tokens, batches."""

from __future__ import annotations

import random

import pytest
import torch

from corral.engine.logits_process import allocate_bitmask, unpack_bits
from corral.engine.sampling_params import StructuredOutputsParams as S
from corral.grammars import fill_bitmasks

from .conftest import EOS_IDS, VOCAB_SIZE

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8},
                   "age": {"type": "integer"},
                   "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
TEXT = '{"name":"Bo","age":30,"tags":["a"]}'
EOS = EOS_IDS[0]
BACKENDS = ["llguidance", "outlines", "xgrammar"]


def allowed_ids(matcher) -> torch.Tensor:
    bitmask = allocate_bitmask(1, VOCAB_SIZE)
    matcher.fill_bitmask(bitmask, 0)
    return unpack_bits(bitmask[0], VOCAB_SIZE).nonzero().flatten()


def replay(compiled, prefix: list[int]):
    matcher = compiled.matcher()
    for token_id in prefix:
        assert matcher.accept_token(token_id)
    return matcher


@pytest.mark.parametrize("backend", BACKENDS)
def test_bitmask_agrees_with_accept_token(compiler, hf_tokenizer, backend):
    compiled = compiler.compile(S(json=SCHEMA, backend=backend))
    ids = hf_tokenizer.encode(TEXT, add_special_tokens=False)
    rng = random.Random(0)
    matcher = compiled.matcher()
    for step, token_id in enumerate(ids + [EOS]):
        allowed = allowed_ids(matcher)
        allowed_set = set(allowed.tolist())
        assert token_id in allowed_set
        assert (EOS in allowed_set) == (step == len(ids))  # EOS only where the grammar ends
        for probe in rng.sample(sorted(allowed_set), min(8, len(allowed_set))):
            assert matcher.accept_token(probe), probe
            matcher.rollback(1)
        for probe in rng.sample(range(VOCAB_SIZE), 8):
            if probe not in allowed_set:
                assert not replay(compiled, ids[:step]).accept_token(probe), probe
        assert matcher.accept_token(token_id)
    assert matcher.is_terminated() and not matcher.is_error()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_allowed_token_is_accepted_at_a_state(compiler, hf_tokenizer, backend):
    compiled = compiler.compile(S(json=SCHEMA, backend=backend))
    prefix = hf_tokenizer.encode('{"name":"Bo","age":3', add_special_tokens=False)
    matcher = replay(compiled, prefix)
    allowed = allowed_ids(matcher).tolist()
    assert 2 <= len(allowed) < VOCAB_SIZE
    for token_id in allowed:
        assert matcher.accept_token(token_id), token_id
        matcher.rollback(1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rollback_restores_state(compiler, hf_tokenizer, backend):
    compiled = compiler.compile(S(json=SCHEMA, backend=backend))
    ids = hf_tokenizer.encode(TEXT, add_special_tokens=False)
    matcher = compiled.matcher()
    masks = []
    for token_id in ids:
        masks.append(allowed_ids(matcher))
        assert matcher.accept_token(token_id)
    assert matcher.accept_token(EOS) and matcher.is_terminated()
    matcher.rollback(1)
    matcher.rollback(len(ids) - 3)
    assert torch.equal(allowed_ids(matcher), masks[3])
    for token_id in ids[3:]:
        assert matcher.accept_token(token_id)
    assert matcher.accept_token(EOS)
    with pytest.raises(ValueError, match="num_tokens"):
        matcher.rollback(len(ids) + 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_token_puts_matcher_in_error_and_mask_ends_it(compiler, hf_tokenizer, backend):
    compiled = compiler.compile(S(json=SCHEMA, backend=backend))
    matcher = compiled.matcher()
    bad = hf_tokenizer.encode("hello", add_special_tokens=False)[0]
    assert not matcher.accept_token(bad)
    assert matcher.is_error() and matcher.error_message
    assert not matcher.is_terminated()
    assert allowed_ids(matcher).tolist() == EOS_IDS
    assert not matcher.accept_token(EOS)


def test_early_eos_is_refused(compiler, hf_tokenizer):
    for backend in BACKENDS:
        matcher = compiler.compile(S(choice=["alpha", "beta"], backend=backend)).matcher()
        assert not matcher.accept_token(EOS)
        assert matcher.is_error()


def test_forced_tokens_fast_forward(compiler, hf_tokenizer):
    compiled = compiler.compile(S(json=SCHEMA))
    matcher = compiled.matcher()
    forced = matcher.forced_tokens()
    assert forced, "a strict schema forces its opening bytes"
    assert '{"name":"'.startswith(hf_tokenizer.decode(forced))
    for token_id in forced:
        assert matcher.accept_token(token_id)
    rest = hf_tokenizer.encode(TEXT[len(hf_tokenizer.decode(forced)):], add_special_tokens=False)
    for token_id in rest:
        assert matcher.accept_token(token_id)
    assert matcher.forced_tokens() == []
    assert matcher.accept_token(EOS)

    one_way = compiler.compile(S(regex="x", backend="outlines")).matcher()
    assert one_way.forced_tokens() == hf_tokenizer.encode("x", add_special_tokens=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_is_terminated_when_nothing_else_can_follow(compiler, hf_tokenizer, backend):
    matcher = compiler.compile(S(choice=["yes", "no"], backend=backend)).matcher()
    for token_id in hf_tokenizer.encode("yes", add_special_tokens=False):
        assert matcher.accept_token(token_id)
    assert matcher.is_terminated()
    assert allowed_ids(matcher).tolist() == EOS_IDS


def test_fill_bitmasks_batch_equals_rows(compiler, hf_tokenizer):
    specs = [S(json=SCHEMA), S(regex=r"[a-z]+"), S(json=SCHEMA, backend="outlines"),
             S(choice=["yes", "no"]), S(json_object=True), S(json=SCHEMA, backend="xgrammar"),
             S(regex=r"[a-z]+", backend="xgrammar"), S(choice=["yes", "no"], backend="xgrammar")]
    matchers = [compiler.compile(spec).matcher() for spec in specs]
    prefix = hf_tokenizer.encode('{"name":"', add_special_tokens=False)
    for token_id in prefix:
        assert matchers[0].accept_token(token_id)
        assert matchers[5].accept_token(token_id)
    bad = hf_tokenizer.encode("!", add_special_tokens=False)[0]
    assert not matchers[3].accept_token(bad)  # errored matchers in the batch
    assert not matchers[7].accept_token(bad)
    rows = [4, 0, 2, 5, 1, 8, 6, 7]
    batch = torch.full((9, (VOCAB_SIZE + 31) // 32), 7, dtype=torch.int32)
    fill_bitmasks(matchers, batch, rows)
    for matcher, row in zip(matchers, rows, strict=True):
        single = allocate_bitmask(1, VOCAB_SIZE)
        matcher.fill_bitmask(single, 0)
        assert torch.equal(batch[row], single[0])
    assert torch.all(batch[3] == 7)  # rows not named are left alone
    assert torch.equal(batch[0], batch[6])  # [a-z]+: both backends, one bit layout
    with pytest.raises(ValueError, match="rows"):
        fill_bitmasks(matchers, batch, [0, 0, 1, 2, 3, 5, 6, 7])
    with pytest.raises(ValueError, match="bitmask"):
        fill_bitmasks(matchers, batch.to(torch.int64), rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ends_after_agrees_with_accepting_step_by_step(compiler, hf_tokenizer, backend):
    """`ends_after` (one native check for llguidance) answers as accepting the tokens,
    asking `can_end` and rolling back would; the matcher is left as it was."""
    from corral.grammars.matcher import Matcher

    compiled = compiler.compile(S(json=SCHEMA, backend=backend))
    ids = hf_tokenizer.encode(TEXT, add_special_tokens=False)
    for cut in range(len(ids) + 1):
        matcher = replay(compiled, ids[:cut])
        before = allowed_ids(matcher)
        for tail in (ids[cut:], ids[cut:-1], ids[cut:cut + 1], [], [ids[0]]):
            expected = Matcher.ends_after(matcher, list(tail))
            assert matcher.ends_after(list(tail)) == expected, (cut, tail)
        assert torch.equal(allowed_ids(matcher), before)
        assert matcher.ends_after(ids[cut:]) is True
