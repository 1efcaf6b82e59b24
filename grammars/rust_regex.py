"""Rust regex syntax (the dialect `GrammarSpec`s and rewritten schemas are written in),
parsed into character sets over Unicode scalar values and a small tree.

Nodes: ("set", Ranges) | ("cat", [node]) | ("alt", [node]) | ("rep", node, min, max or None).
The pattern is matched in full, so a leading `^` and a trailing `$` are no-ops. Flags,
lookaround, backreferences, word boundaries, Unicode classes and the Unicode-wide `\\d` /
`\\w` are refused with a ValueError (Rust gives `\\s` and `.` fixed sets, kept exactly).
"""

from __future__ import annotations

Ranges = list[tuple[int, int]]  # sorted, disjoint, non-adjacent inclusive code point ranges

_MAX = 0x10FFFF
_SCALARS: Ranges = [(0, 0xD7FF), (0xE000, _MAX)]  # surrogates are not characters
# Rust's Unicode `\s` (White_Space).
_SPACE: Ranges = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
                  (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                  (0x3000, 0x3000)]
_SIMPLE_ESCAPES = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "a": 0x07}
_REFUSED_LETTERS = {
    "d": "'\\d' (Unicode digits in Rust syntax)", "D": "'\\D'", "w": "'\\w' (Unicode word)",
    "W": "'\\W'", "p": "Unicode classes", "P": "Unicode classes", "b": "word boundaries",
    "B": "word boundaries", "A": "'\\A'", "z": "'\\z'", "<": "word boundaries",
    ">": "word boundaries",
}


def normalize(ranges: Ranges) -> Ranges:
    """Sorted, merged ranges, surrogates removed."""
    out: Ranges = []
    for lo, hi in sorted(ranges):
        for slo, shi in _SCALARS:
            a, b = max(lo, slo), min(hi, shi)
            if a <= b:
                out.append((a, b))
    merged: Ranges = []
    for lo, hi in sorted(out):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def complement(ranges: Ranges) -> Ranges:
    """Every scalar value not in `ranges`."""
    out: Ranges = []
    start = 0
    for lo, hi in normalize(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX:
        out.append((start, _MAX))
    return normalize(out)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """The scalar values in both `a` and `b`."""
    return complement(complement(a) + complement(b))


class Parser:
    """Recursive descent over Rust regex syntax (no flags) into the nodes above."""

    def __init__(self, pattern: str) -> None:
        self.s = pattern
        self.i = 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{what} at position {self.i} has no exact xgrammar translation")

    def peek(self, k: int = 0) -> str:
        return self.s[self.i + k] if self.i + k < len(self.s) else ""

    def parse(self) -> tuple:
        node = self.alt(depth=0)
        if self.i < len(self.s):
            raise self.fail("an unmatched ')'")
        return node

    def alt(self, depth: int) -> tuple:
        branches = [self.cat(depth)]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.cat(depth))
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def cat(self, depth: int) -> tuple:
        items: list[tuple] = []
        while self.i < len(self.s) and self.peek() not in "|)":
            ch = self.peek()
            if ch == "^" and depth == 0 and not items:
                self.i += 1  # a no-op: the pattern is matched in full
                continue
            if ch == "$" and depth == 0 and self.peek(1) in ("", "|"):
                self.i += 1
                continue
            if ch in "^$":
                raise self.fail(f"an anchor '{ch}' inside the pattern")
            items.append(self.repeat(self.atom(depth)))
        return items[0] if len(items) == 1 else ("cat", items)

    def atom(self, depth: int) -> tuple:
        ch = self.peek()
        if ch in "*+?{":
            raise self.fail(f"a quantifier '{ch}' with nothing to repeat")
        self.i += 1
        if ch == "(":
            if self.peek() == "?":
                if self.s.startswith("?:", self.i):
                    self.i += 2
                elif self.s.startswith(("?P<", "?<"), self.i):
                    start = self.s.index("<", self.i) + 1
                    end = self.s.find(">", start)
                    name = self.s[start:end] if end > start else ""
                    if not (name.replace("_", "a").isalnum() and name.isascii()) or \
                            name[0].isdigit():
                        raise self.fail("a lookbehind or group name")
                    self.i = end + 1
                else:
                    raise self.fail("a group flag")
            node = self.alt(depth + 1)
            if self.peek() != ")":
                raise self.fail("an unclosed group")
            self.i += 1
            return node
        if ch == "[":
            return ("set", self.char_class())
        if ch == ".":
            return ("set", complement([(0x0A, 0x0A)]))
        if ch == "\\":
            return ("set", self.escape(in_class=False))
        return ("set", [(ord(ch), ord(ch))])

    def repeat(self, node: tuple) -> tuple:
        ch = self.peek()
        if ch not in ("*", "+", "?", "{"):
            return node
        self.i += 1
        if ch == "{":
            end = self.s.find("}", self.i)
            body = self.s[self.i:end] if end >= 0 else ""
            low, comma, high = body.partition(",")
            if not low.isdigit() or (high and not high.isdigit()):
                raise self.fail("a counted repetition")
            lo = int(low)
            hi = lo if not comma else (int(high) if high else None)
            if hi is not None and hi < lo:
                raise self.fail("a counted repetition")
            self.i = end + 1
        else:
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        if self.peek() == "?":
            self.i += 1  # lazy: the same language
        if self.peek() in ("*", "+", "?", "{"):
            raise self.fail("a repeated quantifier")
        return ("rep", node, lo, hi)

    def char_class(self) -> Ranges:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        ranges: Ranges = []
        first = True
        while True:
            ch = self.peek()
            if ch == "":
                raise self.fail("an unclosed class")
            if ch == "]" and not first:
                self.i += 1
                break
            if self.s.startswith(("&&", "--", "~~", "[:"), self.i) or \
                    (ch == "-" and not first and self.peek(1) != "]"):
                raise self.fail("a class operation, POSIX class or inner '-'")
            first = False
            lo = self.class_item()
            if self.peek() == "-" and self.peek(1) not in ("", "]"):
                self.i += 1
                hi = self.class_item()
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] != lo[0][1] or \
                        hi[0][0] != hi[0][1] or hi[0][0] < lo[0][0]:
                    raise self.fail("a class range")
                ranges.append((lo[0][0], hi[0][0]))
            else:
                ranges.extend(lo)
        return complement(ranges) if negated else normalize(ranges)

    def class_item(self) -> Ranges:
        ch = self.peek()
        self.i += 1
        if ch == "[":
            return self.char_class()
        if ch == "\\":
            return self.escape(in_class=True)
        return [(ord(ch), ord(ch))]

    def escape(self, in_class: bool) -> Ranges:
        ch = self.peek()
        self.i += 1
        if ch in ("x", "u", "U"):
            return [(self.hex_code(ch), ) * 2]
        if ch in _SIMPLE_ESCAPES:
            return [(_SIMPLE_ESCAPES[ch], _SIMPLE_ESCAPES[ch])]
        if ch == "s":
            return list(_SPACE)
        if ch == "S":
            return complement(_SPACE)
        if ch in _REFUSED_LETTERS:
            raise self.fail(_REFUSED_LETTERS[ch])
        if ch == "" or ch.isalnum() or not ch.isascii():
            raise self.fail(f"the escape '\\{ch}'")
        return [(ord(ch), ord(ch))]

    def hex_code(self, kind: str) -> int:
        if self.peek() == "{":
            end = self.s.find("}", self.i)
            digits = self.s[self.i + 1:end] if end > self.i else ""
            self.i = end + 1
        else:
            width = {"x": 2, "u": 4, "U": 8}[kind]
            digits = self.s[self.i:self.i + width]
            self.i += width if len(digits) == width else 0
            if len(digits) != width:
                digits = ""
        if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits) or \
                int(digits, 16) > _MAX or 0xD800 <= int(digits, 16) <= 0xDFFF:
            raise self.fail(f"the escape '\\{kind}'")
        return int(digits, 16)
