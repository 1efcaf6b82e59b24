"""Rewrite a JSON Schema so that the backends enforce exact Draft 2020-12 semantics.

Two gaps are closed here, before a backend sees the schema:

* `pattern` is an ECMA-262 regex; the backends read Rust syntax, where `.`, `\\s`, `\\d` and
  `\\w` match other sets (Rust `\\s` misses U+FEFF, `\\d` takes any Unicode digit, `.`
  takes `\\r`). They are replaced by the exact ECMA-262 sets.
* `format` date / time / date-time / hostname are enforced by the backends with regexes
  that accept e.g. 2021-02-29 or a leap second at any minute. They are replaced by exact (or
  stricter) patterns: leap years are checked, a leap second is never produced, hostname
  labels follow RFC 1123 and never look like A-labels (`xn--`), the whole name is at most
  253 characters.
"""

from __future__ import annotations

import json
from typing import Any

from corral.grammars.errors import json_schema_error

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = ("additionalProperties", "additionalItems", "not", "if", "then", "else",
               "contains", "propertyNames", "unevaluatedItems", "unevaluatedProperties",
               "contentSchema")

_ECMA_SPACE = (r"\t\n\x0B\x0C\r\x20\xA0\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}"
               r"\x{205F}\x{3000}\x{FEFF}")
_CLASS_ESCAPES = {
    "s": "[" + _ECMA_SPACE + "]",
    "S": "[^" + _ECMA_SPACE + "]",
    "d": "[0-9]",
    "D": "[^0-9]",
    "w": "[0-9A-Za-z_]",
    "W": "[^0-9A-Za-z_]",
}
_ECMA_DOT = r"[^\n\r\x{2028}\x{2029}]"

_YEAR_MONTH_DAY = (
    r"(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    r"|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)"
)
_TIME = (r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
         r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
_ALNUM = "[A-Za-z0-9]"
_LABEL = f"(?:{_ALNUM}(?:[A-Za-z0-9-]{_ALNUM}(?:[A-Za-z0-9-]{{0,59}}{_ALNUM})?|{_ALNUM})?)"
FORMAT_PATTERNS = {
    "date": f"^{_YEAR_MONTH_DAY}$",
    "time": f"^{_TIME}$",
    "date-time": f"^{_YEAR_MONTH_DAY}[Tt]{_TIME}$",
    "hostname": f"^{_LABEL}(?:\\.{_LABEL})*$",
}
_FORMAT_MAX_LENGTH = {"hostname": 253}


_ASCII_DIGITS = {"d": "[0-9]", "D": "[^0-9]"}


def ecma_to_rust_regex(pattern: str) -> str:
    """Translate an ECMA-262 `pattern` into Rust-regex syntax with the same language."""
    return translate_regex(pattern, _CLASS_ESCAPES, _ECMA_DOT)


def ascii_digits_regex(pattern: str) -> str:
    """`pattern` with `\\d` / `\\D` meaning ASCII digits (Rust's `\\d` takes any Unicode digit)."""
    return translate_regex(pattern, _ASCII_DIGITS, None)


def translate_regex(pattern: str, escapes: dict[str, str], dot: str | None) -> str:
    """Replace class escapes (`escapes`: letter -> class) and, if `dot`, a bare `.`."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append(escapes.get(nxt, ch + nxt))
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
            out.append(ch)
            if pattern[i + 1:i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1:i + 2] == "]":
                out.append("\\]")
                i += 1
        elif ch == "[" and in_class:
            out.append("\\[")
        elif ch == "]" and in_class:
            in_class = False
            out.append(ch)
        elif ch == "." and not in_class and dot is not None:
            out.append(dot)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def prepared_schema(text: str, backend: str) -> dict:
    """The schema a backend compiles for canonical JSON `text` (booleans as objects)."""
    schema = json.loads(text)
    if schema is True:
        return {}
    if schema is False:
        raise json_schema_error(backend, "Unsatisfiable schema: the schema is false")
    return rewrite_schema(schema)


def rewrite_schema(schema: Any) -> Any:
    """A copy of `schema` with ECMA patterns translated and inexact formats made exact."""
    return _rewrite(schema, 0)


def _rewrite(node: Any, depth: int) -> Any:
    if not isinstance(node, dict) or depth > 256:
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: _rewrite(v, depth + 1) for k, v in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_rewrite(v, depth + 1) for v in value]
        elif key == "items":
            out[key] = ([_rewrite(v, depth + 1) for v in value] if isinstance(value, list)
                        else _rewrite(value, depth + 1))
        elif key in _SCHEMA_ONE:
            out[key] = _rewrite(value, depth + 1)
        elif key == "pattern" and isinstance(value, str):
            out[key] = ecma_to_rust_regex(value)
        else:
            out[key] = value
    fmt = out.get("format")
    if isinstance(fmt, str) and fmt in FORMAT_PATTERNS:
        del out["format"]
        exact = FORMAT_PATTERNS[fmt]
        if "pattern" in out:
            out["allOf"] = [*out.get("allOf", []), {"pattern": exact}]
        else:
            out["pattern"] = exact
        limit = _FORMAT_MAX_LENGTH.get(fmt)
        if limit is not None:
            current = out.get("maxLength")
            out["maxLength"] = min(limit, current) if isinstance(current, int) else limit
    return out
