"""Lark grammars on which llguidance would loop forever: refused before it reads them.

llguidance's lexer ends a lexeme only when the next byte cannot continue it, and where a
single byte is allowed it forces that byte and looks again, with no limit. A terminal can
thus hold it forever: with `A: /a+/` followed by `B: /a/`, after "a" the only byte allowed
is "a" (continuing A, which the lexer prefers to starting B), and so on without end. The
loop runs in native code holding the GIL, so one such request froze the whole process: a
grammar with `start: "p" A B | "q"` compiled, and the first "p" an engine sampled hung its
step.

`check_no_forced_loop` finds such terminals from the grammar alone. For each terminal, the
characters that can start what follows it (over every rule, recursion included, plus the
`%ignore` terminals) and the terminal's own automaton give, per state of a match, the bytes
allowed next; a cycle of states that each allow exactly one byte is the loop. A terminal
that may end the output never loops (the parser accepts there). Grammars this check cannot
read fully (other directives, templates, constructs `rust_regex` does not read) are left to
llguidance, and the union of followers over all of a terminal's places can only hide a loop,
never invent one: what it refuses does loop.
"""

from __future__ import annotations

import functools
from itertools import chain

from corral.grammars.lark_regex import _Converter, _first, _glushkov, _NotRegular, _number
from corral.grammars.param_error import ParamError
from corral.grammars.rust_regex import Ranges, normalize

END = "<end>"  # the end of the output, in a follow set
MAX_STATES = 4096  # automaton states explored per terminal (past it: no verdict)
MAX_POSITIONS = 4096  # character positions of a terminal, repetitions written out
# Larger grammars are not read (a 12 KB grammar of 600 rules takes ~0.2 s, 44 KB ~3 s):
# they are left to llguidance, like those with constructs this check does not read.
MAX_TEXT_BYTES = 16 * 1024


def check_no_forced_loop(text: str, param: str = "structured_outputs.grammar") -> None:
    """Raise a ParamError naming `param` when llguidance would force bytes forever inside a
    terminal of the Lark grammar `text`; return where no such loop can be shown."""
    looping = _looping_terminal(text)
    if looping is not None:
        raise ParamError(
            param, f"{looping} can hold the lexer forever: after some text it matches, the "
            f"only character allowed next continues {looping} (the lexer prefers the "
            "longest match to what follows it), and so on without end")


@functools.lru_cache(maxsize=256)  # validated, then compiled: read once
def _looping_terminal(text: str) -> str | None:
    """The name of a terminal llguidance would loop in, or None."""
    if len(text) > MAX_TEXT_BYTES:
        return None
    try:
        converter = _Converter(text, read_ignore=True)
        rules = converter.rule_trees()
        ignored = [converter._terminal(name, ()) for name in converter.ignore]
    except _NotRegular:
        return None  # a construct this check does not read: llguidance alone judges it
    except Exception:  # noqa: BLE001 - text lark cannot read: llguidance gives the error
        return None
    if "start" not in rules or any(name not in rules for name in _rule_refs(rules)):
        return None
    reachable = _reachable(rules)
    follow = _terminal_follow({name: rules[name] for name in reachable})
    terms = converter.terms
    between = list(chain.from_iterable(_first(t) for t in ignored))
    firsts: dict[str, Ranges] = {}
    for key, after in follow.items():
        if END in after or not after or not _repeats_unbounded(terms[key]):
            continue  # the parser accepts there, or the automaton has no cycle
        for t in after:
            if t not in firsts:
                firsts[t] = _first(terms[t])
        starts = normalize(between + list(chain.from_iterable(firsts[t] for t in after)))
        try:
            loops = _forced_loop(terms[key], starts)
        except _NotRegular:
            continue  # too large to tell: no verdict for this terminal
        if loops:
            return key.removeprefix("terminal ")
    return None


def _rule_refs(rules: dict[str, tuple]) -> set[str]:
    refs: set[str] = set()
    for tree in rules.values():
        refs |= _refs_in(tree)
    return refs


def _refs_in(node: tuple) -> set[str]:
    kind = node[0]
    if kind == "rule":
        return {node[1]}
    if kind in ("cat", "alt"):
        return set().union(*(_refs_in(c) for c in node[1]))
    if kind == "rep":
        return _refs_in(node[1])
    return set()


def _reachable(rules: dict[str, tuple]) -> set[str]:
    seen, todo = {"start"}, ["start"]
    while todo:
        for name in _refs_in(rules[todo.pop()]) - seen:
            seen.add(name)
            todo.append(name)
    return seen


def _terminal_follow(rules: dict[str, tuple]) -> dict[str, set[str]]:
    """Per terminal key: the terminal keys that can come right after it (END: the output's
    end), over every rule (fixpoints of nullable, first and follow sets)."""
    nullable = {name: False for name in rules}
    first: dict[str, set[str]] = {name: set() for name in rules}

    def node_nullable(node: tuple) -> bool:
        kind = node[0]
        if kind == "leaf":
            return False
        if kind == "rule":
            return nullable[node[1]]
        if kind == "cat":
            return all(node_nullable(c) for c in node[1])
        if kind == "alt":
            return any(node_nullable(c) for c in node[1])
        return node[2] == 0 or node_nullable(node[1])

    def node_first(node: tuple) -> set[str]:
        kind = node[0]
        if kind == "leaf":
            return {node[1]}
        if kind == "rule":
            return first[node[1]]
        if kind == "alt":
            return set().union(*(node_first(c) for c in node[1]))
        if kind == "rep":
            return node_first(node[1])
        out: set[str] = set()
        for child in node[1]:
            out |= node_first(child)
            if not node_nullable(child):
                break
        return out

    changed = True
    while changed:
        changed = False
        for name, tree in rules.items():
            n, f = node_nullable(tree), node_first(tree)
            if n != nullable[name] or f != first[name]:
                nullable[name], first[name], changed = n, f, True

    follow: dict[str, set[str]] = {}
    rule_follow: dict[str, set[str]] = {name: set() for name in rules}
    rule_follow["start"].add(END)

    def visit(node: tuple, after: set[str]) -> None:
        kind = node[0]
        if kind == "leaf":
            follow.setdefault(node[1], set()).update(after)
        elif kind == "rule":
            if not after <= rule_follow[node[1]]:
                rule_follow[node[1]] |= after
                pending.add(node[1])
        elif kind == "alt":
            for child in node[1]:
                visit(child, after)
        elif kind == "rep":
            again = node[3] is None or node[3] >= 2
            visit(node[1], after | node_first(node[1]) if again else after)
        else:  # cat: right to left
            for child in reversed(node[1]):
                visit(child, after)
                after = node_first(child) | after if node_nullable(child) else \
                    set(node_first(child))

    pending = set(rules)
    while pending:
        name = pending.pop()
        visit(rules[name], set(rule_follow[name]))
    return follow


def _repeats_unbounded(node: tuple) -> bool:
    """Whether a rust_regex tree has an unbounded repetition (else its automaton, counted
    repetitions written out, has no cycle)."""
    kind = node[0]
    if kind == "set":
        return False
    if kind in ("cat", "alt"):
        return any(_repeats_unbounded(c) for c in node[1])
    return node[3] is None or _repeats_unbounded(node[1])


def _forced_loop(pattern: tuple, starts: Ranges) -> bool:
    """Whether a match of `pattern`, followed by text that starts with one of `starts`, can
    reach a cycle of states that each allow exactly one character (at a complete match the
    followers' first characters are allowed too: the lexer continues the match with any of
    them it can)."""
    leaves: list[Ranges] = []
    follow: dict[int, set[int]] = {}
    _, first, last = _glushkov(_number(_as_leaves(pattern), leaves), follow)
    begin = frozenset([-1])
    successors = {-1: first, **{p: follow.get(p, set()) for p in range(len(leaves))}}

    def next_positions(state: frozenset[int], code: int) -> frozenset[int]:
        return frozenset(n for p in state for n in successors[p]
                         if any(lo <= code <= hi for lo, hi in leaves[n]))

    def forced(state: frozenset[int]) -> int | None:
        chars = list(chain.from_iterable(leaves[n] for p in state for n in successors[p]))
        if state & last:
            chars += starts
        chars = normalize(chars)
        if len(chars) == 1 and chars[0][0] == chars[0][1]:
            return chars[0][0]
        return None

    # Every state of the match automaton, by subset construction over character atoms.
    points = sorted({lo for r in leaves for lo, _ in r} | {hi + 1 for r in leaves for _, hi in r})
    states, todo = {begin}, [begin]
    while todo:
        state = todo.pop()
        for code in points:
            nxt = next_positions(state, code)
            if nxt and nxt not in states:
                if len(states) >= MAX_STATES:
                    return False  # too large to tell: no verdict
                states.add(nxt)
                todo.append(nxt)
    for state in states:
        seen = {state}
        while (code := forced(state)) is not None:
            state = next_positions(state, code)
            if not state:
                break  # the forced character starts what follows: the match ends
            if state in seen:
                return True
            seen.add(state)
    return False


def _as_leaves(node: tuple) -> tuple:
    """A rust_regex tree with its character sets as numbered-leaf payloads, and counted
    repetitions written out (`x{2,4}` as `x x x? x?`, `x{2,}` as `x x x*`), so that its
    automaton is exact: a bound read as a loop could show a loop that is not there."""
    kind = node[0]
    if kind == "set":
        return ("leaf", node[1])
    if kind in ("cat", "alt"):
        return (kind, [_as_leaves(c) for c in node[1]])
    child, lo, hi = _as_leaves(node[1]), node[2], node[3]
    if (lo, hi) in ((0, None), (1, None), (0, 1)):
        return ("rep", child, lo, hi)
    if _size(node[1]) * max(lo, hi or 0) > MAX_POSITIONS:
        raise _NotRegular("a counted repetition too long to write out")
    tail = [("rep", child, 0, None)] if hi is None else [("rep", child, 0, 1)] * (hi - lo)
    return ("cat", [child] * lo + tail)


def _size(node: tuple) -> int:
    """Character positions of a rust_regex tree, counted repetitions written out."""
    kind = node[0]
    if kind == "set":
        return 1
    if kind in ("cat", "alt"):
        return sum(_size(c) for c in node[1])
    return _size(node[1]) * max(node[2], node[3] or 1, 1)
