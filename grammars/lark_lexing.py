"""Lark grammars whose terminals can never end: refused before llguidance reads them.

llguidance's lexer ends a lexeme only when the next byte cannot continue it. When every
byte that can start what follows a terminal also continues the terminal once it is complete
(`A: /a+/` followed by `B: /a/`), the terminal never ends: the grammar has no text at that
point, and where that byte is the only one allowed, llguidance forces it forever. That loop
holds the GIL in native code, so one such request froze the whole process: a grammar with
`start: "p" A B | "q"` compiled, and the first "p" an engine sampled hung its step.

`check_terminals_can_end` finds such terminals from the grammar alone: for each terminal,
the characters that can start what follows it anywhere in the grammar (rules may recurse),
against the characters that can continue it at each of its accepting positions. It looks
only at grammars it can read fully (no directives; `%ignore` and `%import` are left to
llguidance) and refuses only what it proves: a terminal that may also end the whole output,
or that has any follower starting with a character it cannot swallow, passes.
"""

from __future__ import annotations

from itertools import chain

from corral.grammars.lark_regex import _Converter, _glushkov, _NotRegular, _number
from corral.grammars.param_error import ParamError
from corral.grammars.rust_regex import Ranges, normalize

END = "<end>"  # the end of the output, in a follow set


def check_terminals_can_end(text: str, param: str = "structured_outputs.grammar") -> None:
    """Raise a ParamError naming `param` when a terminal of the Lark grammar `text` can never
    end before what must follow it; return where none can be proven so."""
    try:
        converter = _Converter(text)
        rules = converter.rule_trees()
    except _NotRegular:
        return  # a construct this check does not read: llguidance alone judges it
    except Exception:  # noqa: BLE001 - text lark cannot read: llguidance gives the error
        return
    if "start" not in rules or any(name not in rules for name in _rule_refs(rules)):
        return
    follow = _terminal_follow(rules)
    terms = converter.terms
    for key, after in follow.items():
        if END in after or not after:
            continue
        starts = normalize(list(chain.from_iterable(_first_chars(terms[t]) for t in after)))
        for continues in _continuations_when_complete(terms[key]):
            if starts and _covers(continues, starts):
                name = key.removeprefix("terminal ")
                raise ParamError(
                    param, f"{name} can never end before what must follow it: every "
                    f"character that can start the next terminal also continues {name} "
                    "(the lexer takes the longest match), so no text can complete the "
                    "grammar there")


def _rule_refs(rules: dict[str, tuple]) -> set[str]:
    refs: set[str] = set()

    def visit(node: tuple) -> None:
        if node[0] == "rule":
            refs.add(node[1])
        elif node[0] in ("cat", "alt"):
            for child in node[1]:
                visit(child)
        elif node[0] == "rep":
            visit(node[1])

    for tree in rules.values():
        visit(tree)
    return refs


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


def _first_chars(pattern: tuple) -> Ranges:
    leaves: list[Ranges] = []
    _, first, _ = _glushkov(_number(_as_leaves(pattern), leaves), {})
    return list(chain.from_iterable(leaves[p] for p in first))


def _continuations_when_complete(pattern: tuple) -> list[Ranges]:
    """For each position where a match of `pattern` can be complete: the characters that
    can continue the match from there."""
    leaves: list[Ranges] = []
    follow: dict[int, set[int]] = {}
    _, _, last = _glushkov(_number(_as_leaves(pattern), leaves), follow)
    return [normalize(list(chain.from_iterable(leaves[n] for n in follow.get(p, ()))))
            for p in sorted(last)]


def _as_leaves(node: tuple) -> tuple:
    """A rust_regex tree with its character sets as numbered-leaf payloads."""
    kind = node[0]
    if kind == "set":
        return ("leaf", node[1])
    if kind in ("cat", "alt"):
        return (kind, [_as_leaves(c) for c in node[1]])
    return ("rep", _as_leaves(node[1]), node[2], node[3])


def _covers(ranges: Ranges, wanted: Ranges) -> bool:
    """Whether every character of `wanted` is in `ranges` (both normalized)."""
    return all(any(lo <= w_lo and w_hi <= hi for lo, hi in ranges) for w_lo, w_hi in wanted)
