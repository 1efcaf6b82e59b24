"""The shortest way out of a grammar: tokens that bring a matcher to where it may end.

Near a request's `max_tokens`, the engine steers a constrained sequence along such a
completion (close the string, the arrays, the objects, the tool call), so its output still
parses and validates instead of being cut mid-value. The search uses only the `Matcher`
interface (for llguidance, its own methods on private copies), so it works for every backend:

- It walks a small candidate vocabulary (`CompletionVocab`) and the grammar's forced tokens,
  accepting only what the mask allows, then rolling back. A state is named by the bytes its
  path added (grammars read bytes): `"}` and `"` + `}` meet, and a memo skips states already
  explored with as much room.
- A node's children: its forced tokens; else the allowed candidates of the first tier that
  has any (closers; values and separators; other characters), without those that leave the
  state looking as it was (text inside a string) and merging those that make look-alike
  states. Where nothing changes the state (a minLength, a counted repetition), the longest
  candidate; where no candidate is allowed, a few other allowed tokens. In free text (any
  printable byte allowed, as in a string) a letter that changes nothing stands for every
  byte; where one fill changes nothing either, samples of common formats that lead out come
  first (an unanchored `pattern` hides its way out from the masks until it has matched).
- Limited discrepancy search with branch and bound: the greedy path first (each node's first
  child), then paths that leave it once, twice, ... (departures near the start first), each
  shorter than the best so far, until the tree is exhausted or `node_budget` tokens were
  accepted or tried. Looking one step ahead (is a byte text or a move?) is charged once: the
  state it made is then entered for free, and a state already known costs nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from corral.grammars.completion_vocab import (
    LOWER,
    TIER_CLOSE,
    TIER_FILL,
    TIER_VALUE,
    CompletionVocab,
    Edge,
)
from corral.grammars.llguidance_backend import LLGuidanceMatcher
from corral.grammars.matcher import Matcher
from corral.grammars.param_error import ParamError

__all__ = ["DEFAULT_NODE_BUDGET", "CompletionVocab", "shortest_completion"]

DEFAULT_NODE_BUDGET = 128  # tokens accepted or tried; ~20-80 us each on one CPU core

_TIER_ORDER = (TIER_CLOSE, TIER_VALUE, TIER_FILL)  # in free text: letters before literals
_FEW = 4  # a class with at most this many allowed members is a real choice: keep them all
_UNPROBED = object()


def shortest_completion(matcher: Matcher, max_tokens: int, *, vocab: CompletionVocab,
                        node_budget: int = DEFAULT_NODE_BUDGET) -> list[int] | None:
    """Token ids (at most `max_tokens`, EOS not included) after which `matcher` may end.

    [] when it may end already; None when the matcher is in error or no completion was found
    within `max_tokens` tokens and `node_budget` tokens accepted or tried (the cap on the
    work). The shortest completion over the candidates and forced tokens when the search ends
    within its budget, else the shortest found. The matcher is left as it was.
    """
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise ParamError("max_tokens", f"must be a non-negative integer (got {max_tokens!r})")
    if not isinstance(node_budget, int) or node_budget < 1:
        raise ParamError("node_budget", f"must be a positive integer (got {node_budget!r})")
    if matcher.is_error():
        return None
    if matcher.can_end():
        return []
    return _Search(matcher, vocab, max_tokens, node_budget).run() if max_tokens else None


def _departures_first(edges: Iterator[Edge], left: int) -> Iterator[tuple[Edge | None, bool]]:
    """(edge, whether it leaves the first child) for a node that may leave it `left` more
    times: the other children first, the first last (departures near the root are tried
    before those deep down); with none left, the first child, then (None, True) if there
    was another one."""
    first = next(edges, None)
    if first is None:
        return
    if left:
        for edge in edges:
            yield edge, True
        yield first, False
    else:
        yield first, False
        if next(edges, None) is not None:
            yield None, True


@dataclass(slots=True)
class _Node:
    """What the search knows of one state."""

    can_end: bool
    forced: tuple[int, ...] | None = None  # None until expanded
    bits: np.ndarray | None = None  # [num_candidates] 1 = allowed (nothing forced)
    allowed: np.ndarray | None = None  # [num_allowed] candidate indices, priority order
    signature: bytes = b""  # equal for states that look alike one step ahead
    is_text: bool = False  # free text allowed here (a string's content, say)
    is_free: bool = False  # every printable byte allowed (but `"` and `\`): see `verdict`
    verdicts: dict[int, tuple[bool, bytes]] = field(default_factory=dict)  # `_Search.verdict`
    groups: dict[int, list[int]] = field(default_factory=dict)  # `_Search.group`


class _Search:
    """One search from the matcher's current state (see the module docstring)."""

    def __init__(self, matcher: Matcher, vocab: CompletionVocab, max_tokens: int,
                 node_budget: int) -> None:
        self.matcher, self.vocab = matcher, vocab
        # llguidance: a stack of copies, one per edge of the path, each made from the one
        # below; none is ever rolled back, and the caller's matcher is never touched. (A mask
        # computed on a branch that is then rolled back can make later masks of that matcher
        # stale: llguidance caches the last one by lexer state and row index.)
        self.copies: list[tuple[Any, int]] | None = None  # (copy, tokens of its edge)
        if isinstance(matcher, LLGuidanceMatcher):
            self.copies = [(matcher.inner.deep_copy(), 0)]
        self.trail: list[int] = []  # tokens accepted past the caller's state
        self.budget = node_budget  # tokens the search may still accept or try
        self.bound = max_tokens + 1  # only paths shorter than this are wanted
        self.best: list[int] | None = None
        self.nodes: dict[bytes, _Node] = {}
        self.filled_from: dict[bytes, _Node] = {}  # state -> its parent, when filled text
        # State -> its matcher copy (None: no copies), made by `probe`, not entered since. A
        # probe is charged and the next entry is not: at most 2 * node_budget accepts (and
        # masks) in all.
        self.probed: dict[bytes, Any] = {}
        self.row = np.zeros(vocab.mask_words, dtype=np.int32)  # [mask_words] the last mask
        self.words, self.shifts, self.tiers, self.classes = vocab.arrays

    def run(self) -> list[int] | None:
        try:
            for every_tier in (False, True):  # all tiers at once only if one tier finds none
                self.lds(every_tier, {})
                if self.best is not None:
                    break
        finally:
            self.rollback(len(self.trail))
        return self.best

    def lds(self, every_tier: bool, memo: dict[bytes, tuple[int, int, bool]]) -> None:
        """Limited discrepancy search: the greedy path (0), then paths that leave it 1, 2, ...
        times, until no edge was left out for the limit or the budget is spent."""
        limit = 0
        while self.budget > 0 and self.dfs(every_tier, limit, memo):
            limit += 1

    def dfs(self, every_tier: bool, limit: int, memo: dict[bytes, tuple[int, int, bool]]) -> bool:
        """Paths shorter than `bound` that leave the first child at most `limit` times.

        `memo`: state -> (room, departures left, whether an edge was left out for the limit
        below it) it was explored with, the room as the bound stood when it was done (the
        bound only shrinks); a visit with no more room nor departures is skipped. True if an
        edge was left out for the limit.
        """
        is_limited = False
        root = self.node(b"")
        # Frames: [state, its node, its edges (see `_departures_first`), tokens of the edge
        # in, departures left, (tokens, signature) of the children expanded, an edge left out
        # for the limit below].
        frames = [[b"", root, _departures_first(self.edges(b"", root, every_tier), limit), 0,
                   limit, set(), False]]
        while frames and self.budget > 0:
            frame = frames[-1]
            key, parent, edges, num_in, left, expanded, _ = frame
            edge, is_departure = None, False
            if len(self.trail) + 1 < self.bound:  # else no child could end in time
                edge, is_departure = next(edges, (None, False))
            if edge is None:
                frame[6] |= is_departure  # an edge left out
                frames.pop()
                memo[key] = (self.bound - len(self.trail), left, frame[6])
                if frames:
                    frames[-1][6] |= frame[6]
                is_limited = frame[6]
                self.rollback(num_in)
                continue
            tokens, piece = edge
            room = self.bound - len(self.trail) - len(tokens)
            child, child_left = key + piece, left - is_departure
            seen = memo.get(child)
            if room <= 0 or (seen and seen[0] >= room and seen[1] >= child_left):
                frame[6] |= room > 0 and seen[2]
                continue
            if room == 1:  # no room to go on from there: only an end would do
                known = self.nodes.get(child)
                if known.can_end if known is not None else self.ends_after(tokens):
                    self.best = self.trail + list(tokens)
                    self.bound = len(self.best)
                continue
            if not self.accept(tokens, child):
                continue
            node = self.node(child)
            if node.can_end:  # an end: reached again, only ever by a shorter path
                self.best, self.bound = list(self.trail), len(self.trail)
            elif self.budget > 0 and self.is_new(parent, node, tokens, expanded):
                edges = _departures_first(self.edges(child, node, every_tier), child_left)
                frames.append([child, node, edges, len(tokens), child_left, set(), False])
                continue
            else:
                memo[child] = (room, child_left, False)
            self.rollback(len(tokens))
        return is_limited

    def is_new(self, parent: _Node, node: _Node, tokens: tuple[int, ...],
               expanded: set) -> bool:
        """False for a child that looks like a sibling already expanded (matcher at it).

        `"]]` and `"][` after a colon, or `})` and `]]` in a string, make states that look
        alike: only the first sibling, the most promising, is explored. Not one-byte
        children outside text: `{"a` and `{"b` look alike but start different keys.
        """
        self.expand(node)
        if not parent.is_text and len(self.vocab.token_bytes[tokens[0]]) == len(tokens) == 1:
            return True
        name = (len(tokens), node.signature)
        if name in expanded:
            return False
        expanded.add(name)
        return True

    def edges(self, key: bytes, node: _Node, every_tier: bool) -> Iterator[Edge]:
        """The node's children, most promising first, made as the search asks for them.

        The matcher is at `key` whenever the search asks. Where the bound leaves a child
        room only to end, candidates are not tried beforehand.
        """
        self.expand(node)
        vocab = self.vocab
        if node.forced:
            yield node.forced, b"".join(vocab.token_bytes[t] for t in node.forced)
            return
        seen: set[bytes] = set()  # states of the one-byte children given
        neutral: list[int] = []
        tiers = (TIER_CLOSE, TIER_FILL, TIER_VALUE) if node.is_text else _TIER_ORDER
        for tier in (-1,) if every_tier else tiers:
            is_moving = False
            for i in self.group(node, tier):
                piece = vocab.token_bytes[vocab.token_ids[i]]
                is_one = len(piece) == 1 and vocab.classes[i] >= 0
                if len(self.trail) + 2 >= self.bound or not (node.is_text or is_one):
                    is_moving = True
                    yield self.edge(i)
                    continue
                moves, signature = self.verdict(key, node, piece[0])
                if not moves:
                    neutral.append(i)
                elif len(piece) > 1 or not node.is_text or signature not in seen:
                    seen.add(signature)  # outside text: `{"a` and `{"b` look alike, differ
                    is_moving = True
                    yield self.edge(i)
            if is_moving:
                return
        lengths = [len(vocab.token_bytes[vocab.token_ids[i]]) for i in neutral]
        if neutral:
            edge = self.edge(neutral[lengths.index(max(lengths))])
            self.filled_from[key + edge[1]] = node
            if node.is_free and self.is_long_fill(key, node, edge):
                yield from self.samples_out(key, node)
            yield edge
        elif not len(node.allowed):
            for token_id in self.other_tokens():
                yield (token_id,), vocab.token_bytes[token_id]

    def group(self, node: _Node, tier: int) -> list[int]:
        """The node's allowed candidates of `tier` (-1: all), a class of many allowed
        members cut to its first (a class's members are consecutive)."""
        found = node.groups.get(tier)
        if found is None:
            allowed = node.allowed if tier < 0 else node.allowed[self.tiers[node.allowed] == tier]
            found = allowed.tolist()
            if len(allowed) and self.classes[allowed].max() >= 0:
                classes, counts = self.vocab.classes, Counter(self.classes[allowed].tolist())
                found = [i for n, i in enumerate(found) if n == 0 or classes[i] < 0
                         or counts[classes[i]] <= _FEW or classes[found[n - 1]] != classes[i]]
            node.groups[tier] = found
        return found

    def is_long_fill(self, key: bytes, node: _Node, fill: Edge) -> bool:
        """Whether `node` starts a run of look-alike states that one fill does not leave (a
        long minLength, or a way out hidden from the masks)."""
        parent = self.filled_from.get(key)
        if parent is not None and parent.signature == node.signature:
            return False  # inside a run: its start has looked for a way out
        child = self.probe(key, *fill) if self.budget > 0 else None
        return child is not None and child.signature == node.signature

    def samples_out(self, key: bytes, node: _Node) -> Iterator[Edge]:
        """The vocabulary's samples of common formats after which the state looks different
        (an unanchored `pattern` has matched, say); the matcher is at `key` at each yield.
        With llguidance: those after which the end or a closer refused at `node` may follow."""
        vocab = self.vocab
        ends = [vocab.eos_token_ids[0]] + [vocab.token_ids[i] for i in vocab.closers
                                           if not node.bits[i]]
        for tokens, piece in self.vocab.samples:
            if len(tokens) > self.budget or len(self.trail) + len(tokens) >= self.bound:
                continue
            if self.copies:  # one cheap check, charged as one token
                self.budget -= 1
                copy, num_tokens = self.copies[-1][0], len(tokens) + 1
                if any(copy.validate_tokens([*tokens, end]) == num_tokens for end in ends):
                    yield tokens, piece
                continue
            child = self.probe(key, tokens, piece)
            if child is not None and child.signature != node.signature:
                yield tokens, piece

    def probe(self, key: bytes, tokens: tuple[int, ...], piece: bytes) -> _Node | None:
        """The expanded node that `tokens` lead to from `key`, None where the grammar refuses
        them; the matcher is left at `key`. Charged, unless the state is known; the state's
        next entry is free."""
        known = self.nodes.get(key + piece)
        if known is not None and known.forced is not None:
            return known
        if not self.accept(tokens):
            return None
        child = self.node(key + piece)
        self.expand(child)
        self.probed[key + piece] = self.copies[-1][0] if self.copies else None
        self.rollback(len(tokens))
        return child

    def verdict(self, key: bytes, node: _Node, byte: int) -> tuple[bool, bytes]:
        """Whether `byte` alone changes how the state looks (text does not); its signature.

        A state reached by filling text (see `edges`) that looks as its parent did takes the
        parent's verdicts: a string being filled up to its minLength is not tried again at
        each filler. In free text, where `a` leaves the look as it was, so do all bytes but `"`
        and backslash (a way out that only some text takes is left to `samples_out`).
        """
        if node.is_free and byte not in b'a"\\' and not self.verdict(key, node, ord("a"))[0]:
            return False, node.signature
        if not node.verdicts:
            parent = self.filled_from.get(key)
            if parent is not None and parent.signature == node.signature:
                node.verdicts = parent.verdicts  # shared from now on
        if byte not in node.verdicts:
            single, found = self.vocab.singles[byte], (True, b"")
            if single >= 0 and node.bits[single] and self.budget > 0:
                child = self.probe(key, (self.vocab.token_ids[single],), bytes((byte,)))
                if child is not None:
                    found = (child.signature != node.signature, child.signature)
            node.verdicts[byte] = found
        return node.verdicts[byte]

    def other_tokens(self) -> list[int]:
        """A few allowed tokens that are no candidates, lowest ids (short, in BPE) first."""
        self.fill_bitmask()
        bits = np.unpackbits(self.row.view(np.uint8), bitorder="little")  # [mask_words * 32]
        allowed = np.flatnonzero(bits[:len(self.vocab.token_bytes)])
        return [t for t in allowed[:_FEW + len(self.vocab.eos_token_ids)].tolist()
                if t not in self.vocab.eos_token_ids][:_FEW]

    def edge(self, candidate: int) -> Edge:
        token_id = self.vocab.token_ids[candidate]
        return (token_id,), self.vocab.token_bytes[token_id]

    def node(self, key: bytes) -> _Node:
        """The node of the matcher's current state, named `key`."""
        node = self.nodes.get(key)
        if node is None:
            node = self.nodes[key] = _Node(self.can_end())
        return node

    def expand(self, node: _Node) -> None:
        """Fill in the node's forced tokens, or else its allowed candidates (matcher there)."""
        if node.forced is not None:
            return
        node.forced = () if node.can_end else tuple(self.forced_tokens())
        if node.forced:
            node.signature = b"F" + np.asarray(node.forced, dtype=np.int64).tobytes()
            return
        self.fill_bitmask()
        node.bits = (self.row[self.words] >> self.shifts) & 1
        node.allowed = np.flatnonzero(node.bits)
        node.is_text = np.count_nonzero(self.classes[node.allowed] == LOWER) > _FEW
        node.is_free = node.is_text and bool(node.bits[self.vocab.printable].all())
        node.signature = (b"E" if node.can_end else b"N") + node.bits.tobytes()

    # -- the matcher: the `Matcher` interface, or llguidance's own on the stack of copies ----

    def accept(self, tokens: tuple[int, ...], key: bytes | None = None) -> bool:
        """Accept all of `tokens`, or none (False) where the grammar refuses one. Charges the
        tokens tried (up to the refused one); none for `key`, the state they lead to, on its
        first entry after `probe` made it."""
        probed = self.probed.pop(key, _UNPROBED) if key is not None else _UNPROBED
        is_charged = probed is _UNPROBED
        if self.copies is None:
            for num_ok, token_id in enumerate(tokens):
                self.budget -= int(is_charged)
                if not self.matcher.accept_token(token_id):
                    self.matcher.rollback(num_ok)  # even 0: clears the refusal where it can
                    del self.trail[len(self.trail) - num_ok:]
                    return False
                self.trail.append(token_id)
            return True
        if not is_charged:  # the probe's copy, never changed since
            copy = probed
        else:
            if len(tokens) > 1:
                num_ok = self.copies[-1][0].validate_tokens(list(tokens))
                if num_ok < len(tokens):
                    self.budget -= num_ok + 1
                    return False
            self.budget -= len(tokens)
            copy = self.copies[-1][0].deep_copy()  # ~1 us
            if not copy.consume_tokens(list(tokens)):
                return False  # that copy is in error for good: dropped
        self.copies.append((copy, len(tokens)))
        self.trail.extend(tokens)
        return True

    def ends_after(self, tokens: tuple[int, ...]) -> bool:
        """Whether the grammar may end right after `tokens` (the state is left as it was)."""
        if self.copies:
            self.budget -= len(tokens)
            eos = self.vocab.eos_token_ids[0]
            return self.copies[-1][0].validate_tokens([*tokens, eos]) == len(tokens) + 1
        if not self.accept(tokens):
            return False
        can_end = self.can_end()
        self.rollback(len(tokens))
        return can_end

    def rollback(self, num_tokens: int) -> None:
        """Undo the last edges, `num_tokens` tokens in all."""
        if num_tokens:
            del self.trail[len(self.trail) - num_tokens:]
            if self.copies is None:
                self.matcher.rollback(num_tokens)
            while self.copies is not None and num_tokens > 0:
                num_tokens -= self.copies.pop()[1]

    def can_end(self) -> bool:
        return self.copies[-1][0].is_accepting() if self.copies else self.matcher.can_end()

    def forced_tokens(self) -> list[int]:
        if self.copies:
            return self.copies[-1][0].compute_ff_tokens()
        return self.matcher.forced_tokens()

    def fill_bitmask(self) -> None:
        """The mask of the matcher's state into `row`."""
        self.row[:] = 0
        if self.copies:
            self.copies[-1][0].unsafe_compute_mask_ptr(self.row.ctypes.data, self.row.nbytes)
        else:
            self.matcher.fill_bitmask(torch.from_numpy(self.row).view(1, -1), 0)
