"""Block pool and prefix cache on plain ints."""

from __future__ import annotations

import pytest

from corral.engine.block_manager import BlockManager


def fill(bm: BlockManager, tokens: list[int]) -> tuple[list[int], list[int]]:
    """Allocate blocks for `tokens` and register the full ones, like a finished prefill."""
    blocks = bm.allocate(bm.blocks_needed(len(tokens)))
    hashes: list[int] = []
    for i in range(len(tokens) // bm.block_size):
        chunk = tokens[i * bm.block_size : (i + 1) * bm.block_size]
        hashes.append(bm.register_full_block(blocks[i], hashes[-1] if hashes else None, chunk))
    return blocks, hashes


def test_prefix_hit_reuses_full_blocks_only():
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(10))  # two full blocks and a partial one
    blocks, _ = fill(bm, tokens)
    found, _ = bm.find_cached_prefix(tokens + [99])
    assert found == blocks[:2]
    # Never the whole prompt: one token must stay to compute.
    found, _ = bm.find_cached_prefix(list(range(8)))
    assert found == blocks[:1]


def test_freed_cached_blocks_stay_findable_until_reused_lru_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, _ = fill(bm, [1, 2, 3, 4])
    bm.release(a)
    assert bm.num_free_blocks == 4
    assert bm.find_cached_prefix([1, 2, 3, 4, 5])[0] == a
    # The two never-used blocks go first, then the tail of `a`, then its head.
    first = bm.allocate(2)
    assert set(first).isdisjoint(a)
    assert bm.find_cached_prefix([1, 2, 3, 4, 5])[0] == a
    bm.allocate(1)
    assert bm.find_cached_prefix([1, 2, 3, 4, 5])[0] == a[:1]


def test_hash_chain_depends_on_prefix():
    bm = BlockManager(num_blocks=8, block_size=2)
    fill(bm, [1, 2, 3, 4])
    found, _ = bm.find_cached_prefix([9, 9, 3, 4, 5])
    assert found == []


def test_ref_counts_and_exhaustion():
    bm = BlockManager(num_blocks=3, block_size=2)
    blocks = bm.allocate(3)
    assert not bm.can_allocate(1)
    with pytest.raises(RuntimeError):
        bm.allocate(1)
    bm.acquire(blocks[:1])
    bm.release(blocks)
    assert bm.num_free_blocks == 2
    bm.release(blocks[:1])
    assert bm.num_free_blocks == 3


def test_disabled_prefix_cache_finds_nothing():
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    fill(bm, [1, 2, 3, 4])
    assert bm.find_cached_prefix([1, 2, 3, 4, 5]) == ([], [])
