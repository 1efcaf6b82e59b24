"""Regexes under the default backend move from llguidance to an outlines-core index built in
the background, with the same masks; per-state mask caching; the index cost estimate."""

from __future__ import annotations

import gc
import random
import re
import time

import pytest
import torch

from corral.engine.logits_process import allocate_bitmask
from corral.engine.sampling_params import StructuredOutputsParams as S
from corral.grammars import GrammarCompiler
from corral.grammars.compiler import UPGRADE_MAX_REGEX_COST
from corral.grammars.mask_cache import MaskStore
from corral.grammars.outlines_backend import OutlinesMatcher, OutlinesMatcherFactory, _MaskTable
from corral.grammars.regex_size import regex_cost

from .conftest import EOS_IDS, VOCAB_SIZE

REGEXES = [
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    r"[a-z0-9._]{1,20}@[a-z0-9]{1,15}\.(com|org|net)",
    r"[1-5] - [A-Za-z ,.]{5,60}",
    r"(yes|no|maybe)( \(sure\))?",
]


@pytest.fixture()
def fresh_compiler(hf_tokenizer):
    compiler = GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS)
    yield compiler
    compiler.shutdown()


def upgraded(compiled, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while compiled.backend != "outlines" and time.monotonic() < deadline:
        time.sleep(0.02)
    return compiled.backend == "outlines"


def allowed(bitmask: torch.Tensor) -> list[int]:
    bits = (bitmask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return [t for t in torch.nonzero(bits.flatten()).flatten().tolist() if t < VOCAB_SIZE]


@pytest.mark.parametrize("pattern", REGEXES)
def test_upgraded_regex_keeps_the_language_and_caches_exact_masks(fresh_compiler, hf_tokenizer,
                                                                  pattern):
    compiled = fresh_compiler.compile(S(regex=pattern))
    assert upgraded(compiled)
    reference = fresh_compiler.compile(S(regex=pattern, backend="llguidance"))
    assert reference is not compiled and reference.backend == "llguidance"
    table = compiled.matcher()._table
    uncached = OutlinesMatcherFactory(
        _MaskTable(table.index, VOCAB_SIZE, EOS_IDS, MaskStore(max_bytes=0)))
    rng = random.Random(pattern)
    ours, fresh, theirs = (allocate_bitmask(1, VOCAB_SIZE) for _ in range(3))
    for _walk in range(6):  # later walks revisit states: their masks come from the cache
        matcher, check, llg = compiled.matcher(), uncached(), reference.matcher()
        assert isinstance(matcher, OutlinesMatcher)
        text_ids = []
        for _step in range(80):
            matcher.fill_bitmask(ours, 0)
            check.fill_bitmask(fresh, 0)
            assert torch.equal(ours, fresh)  # a stored mask is the state's mask
            if llg is not None:
                # The same text can follow: every token llguidance allows and the index does
                # not is the start of one the index allows (outlines-core drops a few such
                # tokens at final states; llguidance drops tokens that could only go on in
                # a non-canonical tokenization).
                llg.fill_bitmask(theirs, 0)
                pieces = hf_tokenizer.convert_ids_to_tokens(allowed(ours))
                for token in set(allowed(theirs)) - set(allowed(ours)):
                    piece = hf_tokenizer.convert_ids_to_tokens(token)
                    assert any(p.startswith(piece) for p in pieces), piece
            token = rng.choice(allowed(ours))
            assert matcher.accept_token(token) and check.accept_token(token)
            if llg is not None and not llg.accept_token(token):
                llg = None  # a non-canonical step: llguidance cannot follow this walk
            if token in EOS_IDS:
                assert re.fullmatch(pattern, hf_tokenizer.decode(text_ids))
                break
            text_ids.append(token)


def test_matchers_made_before_a_switch_keep_their_backend(fresh_compiler, hf_tokenizer):
    compiled = fresh_compiler.compile(S(regex=r"[a-z]{2,6}-[0-9]{2}"))
    assert upgraded(compiled)
    reference = fresh_compiler.compile(S(regex=r"[a-z]{2,6}-[0-9]{2}", backend="llguidance"))
    compiled.switch_to("llguidance", reference._factory)  # back, as if not yet upgraded
    before = compiled.matcher()
    outlines = fresh_compiler.compile(S(regex=r"[a-z]{2,6}-[0-9]{2}", backend="outlines"))
    compiled.switch_to("outlines", outlines._factory)
    after = compiled.matcher()
    assert not isinstance(before, OutlinesMatcher) and isinstance(after, OutlinesMatcher)
    for matcher in (before, after):
        assert all(matcher.accept_token(t)
                   for t in hf_tokenizer.encode("abc-12", add_special_tokens=False))
        assert matcher.can_end()


def test_named_backend_and_costly_regexes_stay_on_llguidance(fresh_compiler):
    named = fresh_compiler.compile(S(regex=REGEXES[0], backend="llguidance"))
    costly_pattern = r"[^\"]{0,100}"
    assert regex_cost(costly_pattern) > UPGRADE_MAX_REGEX_COST
    costly = fresh_compiler.compile(S(regex=costly_pattern))
    cheap = fresh_compiler.compile(S(regex=REGEXES[3]))
    assert upgraded(cheap)  # the upgrade thread has run everything queued before it
    assert named.backend == "llguidance" and costly.backend == "llguidance"
    assert fresh_compiler.upgrade_cost_held > 0


def test_upgrades_release_their_budget(hf_tokenizer):
    compiler = GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS, cache_size=1)
    try:
        first = compiler.compile(S(regex=REGEXES[0]))
        assert upgraded(first)
        assert compiler.upgrade_cost_held == pytest.approx(regex_cost(REGEXES[0]))
        del first
        compiler.compile(S(regex="[0-9]{2}"))  # evicts the first from the cache of one
        gc.collect()
        deadline = time.monotonic() + 30
        while compiler.upgrade_cost_held > regex_cost("[0-9]{2}") + 1e-9 \
                and time.monotonic() < deadline:
            time.sleep(0.02)
            gc.collect()
        assert compiler.upgrade_cost_held <= regex_cost("[0-9]{2}") + 1e-9
    finally:
        compiler.shutdown()


def test_outlines_masks_are_stored_per_state(compiler, hf_tokenizer):
    compiled = compiler.compile(S(regex=r"[a-z]{1,8}-[0-9]{2}", backend="outlines"))
    store = MaskStore()  # a table and a store of this test's own, both empty
    factory = OutlinesMatcherFactory(
        _MaskTable(compiled.matcher()._table.index, VOCAB_SIZE, EOS_IDS, store))
    text = "abc-12"
    masks = []
    for _ in range(2):
        matcher = factory()
        row = allocate_bitmask(1, VOCAB_SIZE)
        seen = []
        for token in hf_tokenizer.encode(text, add_special_tokens=False):
            matcher.fill_bitmask(row, 0)
            seen.append(row.clone())
            assert matcher.accept_token(token)
        matcher.fill_bitmask(row, 0)
        seen.append(row.clone())
        masks.append(seen)
    assert all(torch.equal(a, b) for a, b in zip(*masks, strict=True))
    assert store.misses == len(masks[0]) and store.hits == len(masks[0])


def test_regex_cost_weights_positions_by_breadth():
    assert regex_cost("[0-9]{4}") == pytest.approx(4 * 10 / 95)
    assert regex_cost("a{2,}") == pytest.approx(2 / 95)
    assert regex_cost(".{0,10}") == 10  # any character: the whole vocabulary may follow
    assert regex_cost("(ab|c){3}") == pytest.approx(9 / 95)
    with pytest.raises(ValueError):
        regex_cost(r"\bword")


def test_validate_finds_upgradable_regexes_in_the_cache(fresh_compiler, monkeypatch):
    fresh_compiler.compile(S(regex=REGEXES[0]))

    def not_again(spec):
        raise AssertionError("validated again: the cache was missed")

    monkeypatch.setattr(fresh_compiler._llguidance, "validate", not_again)
    fresh_compiler.validate(S(regex=REGEXES[0]))
