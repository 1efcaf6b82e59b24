"""A regular Lark grammar as one Rust-syntax regex with exactly the grammar's language.

llguidance reads a Lark grammar through a lexer: a lexeme ends only when the next character
cannot continue any lexeme. A regex reads the same text with no lexer, so it may split text
where the lexer would not: with `A: /a+/` followed by `B: /a/`, the regex takes "aa" and the
lexer refuses it (it reads "aa" as one `A`). The two languages are equal when no lexeme's
text, followed by a character that can start the next lexeme, is still the start of a
lexeme. `lark_regex` proves that on character sets, conservatively:

    for every place a terminal X can end, with C the characters that can come next,
    and every terminal Y: Y's first characters miss X's, or Y's later characters miss C.

A grammar gets a regex only when it has no recursion, no directive (`%ignore`, `%import`, ...),
no template, no flag on a literal, no terminal priority, no terminal that matches the empty
text, only regex constructs `rust_regex` reads, and passes the check above; otherwise None
(it stays on llguidance, which is exact for every grammar). Nothing is guessed: a regex is
returned only where its language is the grammar's.
"""

from __future__ import annotations

import functools
from itertools import chain

from corral.grammars.rust_regex import Parser, Ranges, intersect, normalize

MAX_NODES = 20_000  # nodes of the grammar with every rule inlined
MAX_TEXT_BYTES = 8 * 1024  # larger grammars are not read
MAX_REGEX_CHARS = 20_000

# Grammar tree: ("leaf", terminal key) | ("cat", [node]) | ("alt", [node])
#   | ("rep", node, min, max or None); terminal keys map to rust_regex trees.


class _NotRegular(Exception):
    """The grammar has no regex this module can prove equal (the reason is the message)."""


@functools.lru_cache(maxsize=256)
def lark_regex(text: str) -> str | None:
    """The regex whose language is exactly the Lark grammar `text`'s, or None (see above)."""
    if len(text) > MAX_TEXT_BYTES:
        return None  # reading it would cost the caller's thread; its index would be too large
    try:
        return _Converter(text).regex()
    except _NotRegular:
        return None
    except Exception:  # noqa: BLE001 - anything lark or the parser cannot read stays on llguidance
        return None


class _Converter:
    def __init__(self, text: str, read_ignore: bool = False) -> None:
        """`read_ignore`: read `%ignore` and `%import` (their terminals in `ignore`)."""
        from lark.load_grammar import load_grammar

        readable = ("%ignore", "%import") if read_ignore else ()
        if any(line.lstrip().startswith("%") and not line.lstrip().startswith(readable)
               for line in text.splitlines()):
            raise _NotRegular("a directive")
        grammar, _ = load_grammar(text, "<grammar>", [], False)
        self.ignore = [str(name) for name in grammar.ignore]
        self.rules = {}
        for name, params, tree, _options in grammar.rule_defs:
            if params:
                raise _NotRegular("a template")
            self.rules[name] = tree
        self.term_trees = {}
        for name, (tree, priority) in grammar.term_defs:
            if priority not in (0, None):
                raise _NotRegular("a terminal priority")
            self.term_trees[str(name)] = tree
        self.terms: dict[str, tuple] = {}  # terminal key -> rust_regex tree
        self.nodes = 0
        self.inline_rules = True  # False: a rule reference stays a ("rule", name) node

    def rule_trees(self) -> dict[str, tuple]:
        """Every rule's grammar tree, rule references kept as ("rule", name) nodes."""
        self.inline_rules = False
        return {name: self._tree(tree, (name,), in_terminal=False)
                for name, tree in self.rules.items()}

    def regex(self) -> str:
        if "start" not in self.rules:
            raise _NotRegular("no start rule")
        tree = self._rule("start", ())
        self._check_lexing(tree)
        out = _emit(tree, self.terms)
        if len(out) > MAX_REGEX_CHARS:
            raise _NotRegular("too long")
        return out

    # -- rules ------------------------------------------------------------------------------

    def _rule(self, name: str, stack: tuple[str, ...]) -> tuple:
        if name in stack:
            raise _NotRegular("recursion")
        if name not in self.rules:
            raise _NotRegular(f"undefined rule {name}")
        return self._tree(self.rules[name], (*stack, name), in_terminal=False)

    def _tree(self, tree, stack: tuple[str, ...], in_terminal: bool) -> tuple:
        """A lark grammar tree as a grammar tree (rules) or a rust_regex tree (terminals)."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _NotRegular("too large")
        data = getattr(tree, "data", None)
        if data == "expansions":
            return _alt([self._tree(c, stack, in_terminal) for c in tree.children])
        if data == "alias":
            return self._tree(tree.children[0], stack, in_terminal)
        if data == "expansion":
            return _cat([self._tree(c, stack, in_terminal) for c in tree.children])
        if data == "maybe":
            return ("rep", self._tree(tree.children[0], stack, in_terminal), 0, 1)
        if data == "expr":
            return self._repeat(tree, stack, in_terminal)
        if data == "value":
            return self._value(tree.children[0], stack, in_terminal)
        raise _NotRegular(f"a construct {data!r}")

    def _repeat(self, tree, stack: tuple[str, ...], in_terminal: bool) -> tuple:
        child = self._tree(tree.children[0], stack, in_terminal)
        op = tree.children[1]
        if op == "~":
            numbers = [int(t) for t in tree.children[2:]]
            lo, hi = numbers[0], numbers[-1]
            if hi < lo:
                raise _NotRegular("a bad range")
            return ("rep", child, lo, hi)
        bounds = {"?": (0, 1), "*": (0, None), "+": (1, None)}.get(str(op))
        if bounds is None:
            raise _NotRegular(f"an operator {op!r}")
        return ("rep", child, *bounds)

    def _value(self, item, stack: tuple[str, ...], in_terminal: bool) -> tuple:
        data = getattr(item, "data", None)
        if data == "literal":
            pattern = _literal_tree(item.children[0])
            if in_terminal:
                return pattern
            return self._leaf(f"literal {item.children[0]}", pattern)
        if data == "range":
            lo, hi = (_literal_text(t) for t in item.children)
            if len(lo) != 1 or len(hi) != 1 or ord(hi) < ord(lo):
                raise _NotRegular("a bad character range")
            pattern = ("set", [(ord(lo), ord(hi))])
            return pattern if in_terminal else self._leaf(f"range {lo}..{hi}", pattern)
        if data is not None:
            return self._tree(item, stack, in_terminal)
        kind = type(item).__name__
        if kind == "NonTerminal":
            if in_terminal:
                raise _NotRegular("a rule inside a terminal")
            if not self.inline_rules:
                return ("rule", item.name)
            return self._rule(item.name, stack)
        if kind == "Terminal":
            return self._terminal(item.name, stack) if in_terminal else \
                self._leaf(item.name, self._terminal(item.name, stack))
        raise _NotRegular(f"a value {item!r}")

    def _terminal(self, name: str, stack: tuple[str, ...]) -> tuple:
        key = f"terminal {name}"
        if key in stack:
            raise _NotRegular("a recursive terminal")
        if name not in self.term_trees:
            raise _NotRegular(f"undefined terminal {name}")
        return self._tree(self.term_trees[name], (*stack, key), in_terminal=True)

    def _leaf(self, key: str, pattern: tuple) -> tuple:
        if _nullable(pattern):
            raise _NotRegular(f"{key} matches the empty text")
        self.terms[key] = pattern
        return ("leaf", key)

    # -- the lexing check ---------------------------------------------------------------

    def _check_lexing(self, tree: tuple) -> None:
        """Raise unless no terminal's text, followed by what may come next, still starts a
        terminal (the module docstring's condition)."""
        follow: dict[int, set[int]] = {}
        leaves: list[str] = []
        _glushkov(_number(tree, leaves), follow)
        first = {key: normalize(_first(p)) for key, p in self.terms.items()}
        later = {key: normalize(_later(p)) for key, p in self.terms.items()}
        for position, key in enumerate(leaves):
            after = normalize(list(chain.from_iterable(
                first[leaves[n]] for n in follow.get(position, ()))))
            if not after:
                continue
            for other in self.terms:
                if intersect(first[key], first[other]) and intersect(after, later[other]):
                    raise _NotRegular(f"{key} may run on into {other}")


def _literal_text(token) -> str:
    from lark.load_grammar import _literal_to_pattern

    pattern = _literal_to_pattern(token)
    if pattern.flags:
        raise _NotRegular("a flag on a literal")
    if type(pattern).__name__ != "PatternStr":
        raise _NotRegular("a regex where a string is needed")
    return pattern.value


def _literal_tree(token) -> tuple:
    from lark.load_grammar import _literal_to_pattern

    pattern = _literal_to_pattern(token)
    if pattern.flags:
        raise _NotRegular("a flag on a literal")
    if type(pattern).__name__ == "PatternStr":
        if not pattern.value:
            raise _NotRegular("an empty literal")
        return _cat([("set", [(ord(ch), ord(ch))]) for ch in pattern.value])
    try:
        return Parser(pattern.value).parse()
    except ValueError as e:
        raise _NotRegular(str(e)) from None


def _cat(items: list[tuple]) -> tuple:
    return items[0] if len(items) == 1 else ("cat", items)


def _alt(items: list[tuple]) -> tuple:
    return items[0] if len(items) == 1 else ("alt", items)


# -- character sets of a rust_regex tree -------------------------------------------------------

def _nullable(node: tuple) -> bool:
    kind = node[0]
    if kind == "set":
        return False
    if kind == "cat":
        return all(_nullable(c) for c in node[1])
    if kind == "alt":
        return any(_nullable(c) for c in node[1])
    return node[2] == 0 or _nullable(node[1])  # rep


def _first(node: tuple) -> Ranges:
    """Characters that can start a match (unnormalized)."""
    kind = node[0]
    if kind == "set":
        return list(node[1])
    if kind == "alt":
        return list(chain.from_iterable(_first(c) for c in node[1]))
    if kind == "rep":
        return _first(node[1])
    out: Ranges = []
    for child in node[1]:  # cat
        out += _first(child)
        if not _nullable(child):
            break
    return out


def _later(node: tuple) -> Ranges:
    """Characters that can stand second or later in a match (a superset)."""
    kind = node[0]
    if kind == "set":
        return []
    if kind == "alt":
        return list(chain.from_iterable(_later(c) for c in node[1]))
    if kind == "rep":
        child, hi = node[1], node[3]
        return _later(child) + (_first(child) if hi is None or hi >= 2 else [])
    out: Ranges = []
    for i, child in enumerate(node[1]):  # cat
        out += _later(child) + (_first(child) if i else [])
    return out


# -- positions of terminals in the grammar tree (Glushkov) ------------------------------------

def _number(node: tuple, leaves: list[str]) -> tuple:
    """The tree with each leaf numbered in order (`leaves[n]` is leaf n's terminal key)."""
    kind = node[0]
    if kind == "leaf":
        leaves.append(node[1])
        return ("leaf", len(leaves) - 1)
    if kind in ("cat", "alt"):
        return (kind, [_number(c, leaves) for c in node[1]])
    return ("rep", _number(node[1], leaves), node[2], node[3])


def _glushkov(node: tuple, follow: dict[int, set[int]]) -> tuple[bool, set[int], set[int]]:
    """(nullable, first positions, last positions) of `node`; adds to `follow` the
    positions that can come right after each position."""
    kind = node[0]
    if kind == "leaf":
        return False, {node[1]}, {node[1]}
    if kind == "alt":
        parts = [_glushkov(c, follow) for c in node[1]]
        return (any(p[0] for p in parts), set().union(*(p[1] for p in parts)),
                set().union(*(p[2] for p in parts)))
    if kind == "rep":
        nullable, first, last = _glushkov(node[1], follow)
        if node[3] is None or node[3] >= 2:
            for position in last:
                follow.setdefault(position, set()).update(first)
        return nullable or node[2] == 0, first, last
    nullable, first, last = True, set(), set()  # cat
    for child in node[1]:
        c_nullable, c_first, c_last = _glushkov(child, follow)
        for position in last:
            follow.setdefault(position, set()).update(c_first)
        if nullable:
            first |= c_first
        last = last | c_last if c_nullable else set(c_last)
        nullable = nullable and c_nullable
    return nullable, first, last


# -- emitting Rust regex syntax ---------------------------------------------------------------

def _emit(node: tuple, terms: dict[str, tuple]) -> str:
    while node[0] == "leaf":
        node = terms[node[1]]
    kind = node[0]
    if kind == "set":
        return _emit_set(node[1])
    if kind == "cat":
        parts = [terms[c[1]] if c[0] == "leaf" else c for c in node[1]]
        return "".join(_group(c, terms) if c[0] == "alt" else _emit(c, terms) for c in parts)
    if kind == "alt":
        return "|".join(_emit(c, terms) for c in node[1])
    child, lo, hi = node[1], node[2], node[3]
    while child[0] == "leaf":
        child = terms[child[1]]
    body = _emit(child, terms) if child[0] == "set" else _group(child, terms)
    if (lo, hi) == (0, None):
        return body + "*"
    if (lo, hi) == (1, None):
        return body + "+"
    if (lo, hi) == (0, 1):
        return body + "?"
    return body + (f"{{{lo},}}" if hi is None else f"{{{lo},{hi}}}")


def _group(node: tuple, terms: dict[str, tuple]) -> str:
    return "(?:" + _emit(node, terms) + ")"


def _emit_set(ranges: Ranges) -> str:
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _char(ranges[0][0])
    return "[" + "".join(_char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}"
                         for lo, hi in ranges) + "]"


def _char(code: int) -> str:
    ch = chr(code)
    return ch if ch.isascii() and ch.isalnum() else f"\\x{{{code:X}}}"
