"""The mask cache of repeated grammars: cached masks are the grammar's own, hits happen on
shared paths, rollbacks keep the path right, and the store stays within its bytes."""

from __future__ import annotations

import json
import random

import pytest
import torch

from corral.engine.logits_process import allocate_bitmask
from corral.engine.sampling_params import StructuredOutputsParams as S
from corral.grammars import accept_tokens, fill_bitmasks
from corral.grammars.mask_cache import MaskCache, MaskStore, Node, shared_store

from .conftest import VOCAB_SIZE

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}}},
    "required": ["name", "age", "tags"], "additionalProperties": False}


def _allowed(row: torch.Tensor) -> list[int]:
    bits = (row.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.reshape(-1)[:VOCAB_SIZE].nonzero().flatten().tolist()


def _fresh(compiler, tokens: list[int]) -> torch.Tensor:
    """The mask after `tokens` from an uncached matcher (fresh compile of its own)."""
    compiled = compiler.compile(S(json=SCHEMA))
    matcher = compiled._factory()
    for token in tokens:
        assert matcher.accept_token(token)
    bitmask = allocate_bitmask(1, VOCAB_SIZE)
    matcher.fill_bitmask(bitmask, 0)
    return bitmask[0]


@pytest.mark.parametrize("threads", ["1", "4"])
def test_cached_masks_equal_computed_ones_on_random_walks(compiler, hf_tokenizer, monkeypatch,
                                                          threads):
    monkeypatch.setenv("CORRAL_MASK_THREADS", threads)
    compiled = compiler.compile(S(json=SCHEMA))
    rng = random.Random(0)
    store = shared_store()
    hits0 = store.hits
    texts = [json.dumps({"name": n, "age": a, "tags": t}, separators=(",", ":"))
             for n, a, t in [("Ann", 31, ["a"]), ("Ann", 31, ["b", "c"]), ("Bob", 7, []),
                             ("Ann", 4, ["a", "a"])] * 3]
    walks = [hf_tokenizer.encode(text, add_special_tokens=False) for text in texts]
    matchers = [compiled.matcher() for _ in walks]
    assert sum(m.mask_cache is not None for m in matchers) >= len(matchers) - 1
    bitmask = allocate_bitmask(len(walks), VOCAB_SIZE)
    history: list[list[int]] = [[] for _ in walks]
    for step in range(max(map(len, walks))):
        live = [i for i, w in enumerate(walks) if step < len(w)]
        fill_bitmasks([matchers[i] for i in live], bitmask, live)
        for i in live:
            if rng.random() < 0.15:  # a fresh computation to compare against
                assert torch.equal(bitmask[i], _fresh(compiler, history[i])), (i, step)
            assert walks[i][step] in _allowed(bitmask[i])
        assert all(accept_tokens([matchers[i] for i in live], [walks[i][step] for i in live]))
        for i in live:
            history[i].append(walks[i][step])
    assert store.hits > hits0


def test_rollback_keeps_the_cache_path(compiler, hf_tokenizer):
    compiled = compiler.compile(S(json=SCHEMA))
    compiled.matcher()  # the second matcher on shares the cache
    matcher = compiled.matcher()
    assert matcher.mask_cache is not None
    ids = hf_tokenizer.encode('{"name":"Zed","age":1', add_special_tokens=False)
    for token in ids:
        matcher.accept_token(token)
    matcher.rollback(3)
    other = hf_tokenizer.encode('{"name":"Zed","age":', add_special_tokens=False)
    bitmask = allocate_bitmask(1, VOCAB_SIZE)
    expected = _fresh(compiler, ids[:-3])
    for _ in range(3):  # computed, then stored, then served from the cache
        matcher.fill_bitmask(bitmask, 0)
        assert torch.equal(bitmask[0], expected)
    assert len(other) >= len(ids) - 3


def test_store_keeps_within_its_bytes():
    store = MaskStore(max_bytes=3 * 4 * 8)  # three rows of 8 words
    cache = MaskCache(store)
    nodes = [cache.child(cache.root, t) for t in range(5)]
    for i, node in enumerate(nodes):
        store.put(node, torch.full((8,), i, dtype=torch.int32))
    assert store.num_bytes <= store.max_bytes
    assert [n.mask is not None for n in nodes] == [False, False, True, True, True]
    target = torch.zeros(8, dtype=torch.int32)
    assert cache.lookup(nodes[4], target) and int(target[0]) == 4
    assert not cache.lookup(nodes[0], target)
    assert isinstance(cache.root, Node)
