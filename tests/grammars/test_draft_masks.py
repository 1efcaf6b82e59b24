"""Masks for speculative verification: row r is the grammar's mask after r drafts, and the
matcher comes back unchanged, with no mask from a rejected draft left behind."""

from __future__ import annotations

import pytest
import torch

from corral.engine.logits_process import allocate_bitmask
from corral.engine.sampling_params import StructuredOutputsParams as S
from corral.grammars import fill_bitmasks_with_drafts

from .conftest import VOCAB_SIZE

BACKENDS = ["llguidance", "outlines", "xgrammar"]
TWO_KEYS = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "required": ["b"]}


def _fresh_mask(compiled, tokens: list[int]) -> torch.Tensor:
    matcher = compiled.matcher()
    for token in tokens:
        assert matcher.accept_token(token)
    bitmask = allocate_bitmask(1, VOCAB_SIZE)
    fill_bitmasks_with_drafts([matcher], [[]], bitmask, [0])
    return bitmask[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_row_is_the_mask_after_its_drafts(compiler, hf_tokenizer, backend):
    compiled = compiler.compile(S(json=TWO_KEYS, backend=backend))
    prefix = hf_tokenizer.encode('{"a":"', add_special_tokens=False)
    drafts = hf_tokenizer.encode('hello","b":"x"}', add_special_tokens=False)
    matcher = compiled.matcher()
    for token in prefix:
        matcher.accept_token(token)
    bitmask = allocate_bitmask(len(drafts) + 2, VOCAB_SIZE)
    fill_bitmasks_with_drafts([matcher], [drafts], bitmask, [1])
    for r in range(len(drafts) + 1):
        assert torch.equal(bitmask[1 + r], _fresh_mask(compiled, prefix + drafts[:r])), r
    assert matcher.num_accepted == len(prefix)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_stale_mask_after_rejected_drafts(compiler, hf_tokenizer, backend):
    """Drafts along `{"a":"x`, then the model writes `{"b":"x`: the next mask must be the
    grammar's (it allows closing the object), not one left from the draft branch."""
    compiled = compiler.compile(S(json=TWO_KEYS, backend=backend))
    drafted = hf_tokenizer.encode('{"a":"x', add_special_tokens=False)
    written = hf_tokenizer.encode('{"b":"x', add_special_tokens=False)
    assert len(drafted) == len(written)
    matcher = compiled.matcher()
    bitmask = allocate_bitmask(len(drafted) + 1, VOCAB_SIZE)
    fill_bitmasks_with_drafts([matcher], [drafted], bitmask, [0])
    for token in written:
        assert matcher.accept_token(token)
    fill_bitmasks_with_drafts([matcher], [[]], bitmask, [0])
    assert torch.equal(bitmask[0], _fresh_mask(compiled, written))


def test_rows_must_fit_the_bitmask(compiler, hf_tokenizer):
    compiled = compiler.compile(S(json=TWO_KEYS))
    drafts = hf_tokenizer.encode('{"b":"x"}', add_special_tokens=False)
    with pytest.raises(ValueError, match="first_rows"):
        fill_bitmasks_with_drafts([compiled.matcher()], [drafts], allocate_bitmask(2, VOCAB_SIZE),
                                  [0])
