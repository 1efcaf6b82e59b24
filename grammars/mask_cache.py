"""A mask cache for grammars that many sequences share (registered and repeated grammars).

A grammar matcher is deterministic: its state, and so its mask, is a function of the tokens
it accepted since its start. The cache keeps the masks of one compiled grammar in a trie
keyed by those exact token paths (no hashing, so no collisions: never a wrong mask). A
path's mask is stored the second time any sequence reaches it, and copied out from then on
instead of being computed; many sequences of one schema walk the same paths through its
fixed parts (`{"name":"`, the keys, the closing brackets, a tool call's frame).

Memory is bounded twice: trie nodes per grammar (`MAX_NODES`, `MAX_DEPTH`; paths past them
are not tracked and cost nothing), and the bytes of stored masks across all grammars
(`MaskStore`, least recently used first out).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np
import torch

MAX_NODES = 200_000  # trie nodes per grammar
# Paths deeper than this are not tracked: sequences of one grammar share their first tokens
# (a schema's first keys, a call's frame), rarely the states after free-text values.
MAX_DEPTH = 48
STORE_AFTER_VISITS = 2  # a path's mask is stored on its second fill


class Node:
    """One token path: its children by next token, its stored mask (int32 words, numpy:
    a row is copied into a batch's buffer by one numpy assignment)."""

    __slots__ = ("children", "depth", "mask", "visits")

    def __init__(self, depth: int = 0) -> None:
        self.children: dict[int, Node] = {}
        self.depth = depth
        self.mask: np.ndarray | None = None  # int32 [words]
        self.visits = 0


class MaskStore:
    """The stored masks of every cache, within `max_bytes` (least recently used first out).

    Shared by the engine thread (reads, through `touch`) and the mask-fill worker (writes).
    """

    def __init__(self, max_bytes: int = 256 * 1024**2) -> None:
        self.max_bytes = max_bytes
        self.num_bytes = 0
        self.hits = 0  # masks served from the store or from a twin row of the same batch
        self.misses = 0  # masks computed by matchers that use a cache
        self._nodes: OrderedDict[int, Node] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, node: Node, mask: torch.Tensor | np.ndarray) -> None:
        """Store a copy of `mask` (a CPU int32 row) at `node`."""
        if isinstance(mask, torch.Tensor):
            mask = mask.numpy()
        size = mask.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            if node.mask is not None:
                return
            while self.num_bytes + size > self.max_bytes and self._nodes:
                _, old = self._nodes.popitem(last=False)
                if old.mask is not None:
                    self.num_bytes -= old.mask.nbytes
                    old.mask = None
            node.mask = mask.copy()
            self.num_bytes += size
            self._nodes[id(node)] = node

    def touch(self, node: Node) -> None:
        with self._lock:
            if id(node) in self._nodes:
                self._nodes.move_to_end(id(node))

    def touch_all(self, nodes: list[Node]) -> None:
        """Count a hit on each of `nodes` (their masks were just copied out): one lock."""
        self.hits += len(nodes)
        with self._lock:
            stored = self._nodes
            for node in nodes:
                if id(node) in stored:
                    stored.move_to_end(id(node))


class MaskCache:
    """The trie of one compiled grammar."""

    def __init__(self, store: MaskStore) -> None:
        self.store = store
        self.root = Node()
        self.num_nodes = 1

    def child(self, node: Node | None, token_id: int) -> Node | None:
        """The node after `token_id`, created if the trie has room (None: untracked)."""
        if node is None or node.depth >= MAX_DEPTH:
            return None
        found = node.children.get(token_id)
        if found is None and self.num_nodes < MAX_NODES:
            found = node.children[token_id] = Node(node.depth + 1)
            self.num_nodes += 1
        return found

    def lookup(self, node: Node | None, target: torch.Tensor) -> bool:
        """Copy the stored mask of `node` into `target` (one row); False when absent."""
        mask = node.mask if node is not None else None
        if mask is None:
            return False
        target.copy_(torch.from_numpy(mask))
        self.store.hits += 1
        self.store.touch(node)
        return True

    def shared(self) -> None:
        """Count a mask copied from another row of the same batch at the same state."""
        self.store.hits += 1

    def filled(self, node: Node | None, row: torch.Tensor | np.ndarray) -> None:
        """A mask was computed into `row` at `node`: count the visit, store if repeated."""
        self.store.misses += 1
        if node is None:
            return
        node.visits += 1
        if node.visits >= STORE_AFTER_VISITS:
            self.store.put(node, row)


_STORE: MaskStore | None = None
_STORE_LOCK = threading.Lock()


def shared_store() -> MaskStore:
    """The process-wide store (`CORRAL_MASK_CACHE_MB`, default 256; 0 turns caching off)."""
    global _STORE
    with _STORE_LOCK:
        if _STORE is None:
            megabytes = float(os.environ.get("CORRAL_MASK_CACHE_MB", "256"))
            _STORE = MaskStore(int(megabytes * 1024**2))
        return _STORE
