"""Rust-syntax regexes (what `GrammarSpec`s and rewritten schemas hold) in xgrammar's dialect.

xgrammar reads an ECMA-like dialect with other meanings (`.` takes `\\n`, `\\s` is not
Unicode's, `\\x{..}` is a literal `x`, a misplaced `^` or `$` is dropped with a warning), and
its converter re-prints character classes in a way that misreads an escape followed by a hex
digit or a leading `^`. So the pattern is parsed (`rust_regex`) into sets of code points, printed
back in a form xgrammar reads exactly: every character outside `[A-Za-z0-9]` as a `\\uHHHH`
(or `\\u{HHHHH}` past U+FFFF) escape, classes as positive ranges of such escapes never
starting with U+005E. Anything whose meaning is not certain is refused with a ValueError.

With `json_string=True` every character set is cut to what a JSON string holds unescaped (no
quote, backslash or control character): xgrammar pastes a schema's `pattern` raw between the
quotes, and its reader of those patterns loses escape sequences inside alternations
(`(?:a|\\u005ct)` never takes `\\t`), so escapes cannot be offered. The cut keeps the output
valid JSON and only makes the pattern stricter.
"""

from __future__ import annotations

from corral.grammars.rust_regex import Parser, Ranges, complement, intersect, normalize

_JSON_RAW: Ranges = complement([(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])


def _escape(cp: int) -> str:
    if chr(cp).isascii() and chr(cp).isalnum():
        return chr(cp)
    return _class_escape(cp)


def _class_escape(cp: int) -> str:
    # Both of xgrammar's regex readers (grammar regexes and JSON string patterns) take these.
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\u{{{cp:x}}}"


def _is_hex(cp: int) -> bool:
    return chr(cp) in "0123456789abcdefABCDEF"


def emit_set(ranges: Ranges) -> str | None:
    """One character of `ranges` in xgrammar syntax; None for the empty set."""
    ranges = normalize(ranges)
    if not ranges:
        return None
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _escape(ranges[0][0])
    # xgrammar re-prints a class with its own shortest escapes (`\x1`, `\ue9`) and printable
    # ASCII as itself: an escape followed by a hex digit would merge with it. Ranges opening
    # with a hex digit go first; the one of them that may end escaped ends past U+007E, so
    # every range after it opens escaped too.
    ranges = [r for r in ranges if _is_hex(r[0])] + [r for r in ranges if not _is_hex(r[0])]
    if ranges[0][0] == 0x5E:  # xgrammar would read a leading U+005E as negation
        lo, hi = ranges[0]
        ranges = ranges[1:] + [(0x5E, 0x5E)] if lo == hi else \
            [(0x5F, hi)] + ranges[1:] + [(0x5E, 0x5E)]
    items = [_class_escape(lo) if lo == hi else f"{_class_escape(lo)}-{_class_escape(hi)}"
             for lo, hi in ranges]
    return "[" + "".join(items) + "]"


def to_xgrammar_regex(pattern: str, json_string: bool = False) -> str:
    """`pattern` (Rust syntax, matched in full) in xgrammar's dialect, with the same language.

    With `json_string` only the strings a JSON string holds unescaped are kept. ValueError
    (its message says what) for constructs without an exact translation, and for a pattern
    that can match nothing.
    """
    node = Parser(pattern).parse()
    text = _emit(node, json_string)
    if text is None:
        raise ValueError("it matches no string" + (" without JSON escapes" if json_string
                                                   else ""))
    return text


def _emit(node: tuple, json_string: bool) -> str | None:
    """Print one parsed node; None when it can match nothing."""
    kind = node[0]
    if kind == "set":
        return emit_set(intersect(node[1], _JSON_RAW) if json_string else node[1])
    if kind == "cat":
        parts = []
        for child in node[1]:
            text = _emit(child, json_string)
            if text is None:
                return None
            parts.append(_grouped(text) if child[0] == "alt" else text)
        return "".join(parts)
    if kind == "alt":
        branches = [t for t in (_emit(c, json_string) for c in node[1]) if t is not None]
        if not branches:
            return None
        return "|".join(branches)
    lo, hi = node[2], node[3]  # "rep": (child, min, max or None)
    text = _emit(node[1], json_string)
    if text is None or hi == 0:
        return "" if lo == 0 else None
    if text == "":
        return ""
    body = text if node[1][0] == "set" else _grouped(text)
    if (lo, hi) == (0, None):
        return body + "*"
    if (lo, hi) == (1, None):
        return body + "+"
    if (lo, hi) == (0, 1):
        return body + "?"
    if hi is None:
        return f"{body}{{{lo},}}"
    return f"{body}{{{lo}}}" if lo == hi else f"{body}{{{lo},{hi}}}"


def _grouped(text: str) -> str:
    return f"(?:{text})"
