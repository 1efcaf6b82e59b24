"""The KV block pool: ref-counted blocks with automatic prefix caching.

A full block is identified by a chained hash of (parent block's hash, its token ids). When
a sequence fills a block, the block is registered under that hash; a later sequence whose
prompt starts with the same tokens reuses it instead of computing it again. Freed blocks
keep their hash and stay findable until the pool needs them: free blocks are handed out
least-recently-freed first. The last, partial block of a sequence is never shared.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from corral.grammars.param_error import ParamError


@dataclass
class Block:
    """One block of `block_size` KV slots."""

    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] = field(default_factory=tuple)


def hash_block(parent_hash: int | None, token_ids: Seq[int]) -> int:
    """The chained hash of a full block."""
    return hash((parent_hash, tuple(token_ids)))


class BlockManager:
    """Owns the blocks. Sequences own their block tables (lists of block ids)."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ParamError("num_blocks", f"must be positive (got {num_blocks})")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in eviction order: the first is reused next.
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[int, int] = {}  # block hash -> block id
        self.prefix_cache_queries = 0  # prompt tokens looked up
        self.prefix_cache_hits = 0  # of which found cached

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences."""
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    def find_cached_prefix(self, token_ids: Seq[int]) -> tuple[list[int], list[int]]:
        """Blocks holding the longest cached run of full blocks at the start of `token_ids`.

        At least one token is always left to compute (the last one gives the logits).
        Returns (block ids, their hashes).
        """
        if not self.enable_prefix_caching:
            return [], []
        bs = self.block_size
        max_blocks = (len(token_ids) - 1) // bs
        block_ids: list[int] = []
        hashes: list[int] = []
        parent: int | None = None
        for i in range(max_blocks):
            chunk = tuple(token_ids[i * bs : (i + 1) * bs])
            block_hash = hash_block(parent, chunk)
            block_id = self._cached.get(block_hash)
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            block_ids.append(block_id)
            hashes.append(block_hash)
            parent = block_hash
        return block_ids, hashes

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_cache_queries += num_tokens
        self.prefix_cache_hits += num_hit_tokens

    def acquire(self, block_ids: Seq[int]) -> None:
        """Take a reference on blocks (cached blocks being reused, or shared ones)."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self._free)

    def allocate(self, num_blocks: int) -> list[int]:
        """Fresh blocks (ref count 1); evicts the least recently freed cached blocks."""
        if num_blocks > len(self._free):
            raise RuntimeError(f"out of KV blocks: need {num_blocks}, {len(self._free)} free")
        out = []
        for _ in range(num_blocks):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:
                if self._cached.get(block.block_hash) == block_id:
                    del self._cached[block.block_hash]
                block.block_hash = None
                block.token_ids = ()
            block.ref_count = 1
            out.append(block_id)
        return out

    def release(self, block_ids: Seq[int]) -> None:
        """Drop a reference on each block; the tail is freed first so it is evicted first."""
        for block_id in reversed(block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None

    def register_full_block(self, block_id: int, parent_hash: int | None,
                            token_ids: Seq[int]) -> int:
        """Record a block that just became full; returns its hash."""
        chunk = tuple(token_ids)
        block_hash = hash_block(parent_hash, chunk)
        if not self.enable_prefix_caching:
            return block_hash
        block = self.blocks[block_id]
        if block.block_hash is None:
            block.block_hash = block_hash
            block.token_ids = chunk
            self._cached.setdefault(block_hash, block_id)
        return block_hash

    def reset_prefix_cache(self) -> None:
        """Forget every cached hash (blocks in use are unaffected)."""
        for block_id in list(self._free):
            block = self.blocks[block_id]
            block.block_hash = None
            block.token_ids = ()
        self._cached = {h: b for h, b in self._cached.items() if self.blocks[b].ref_count > 0}
