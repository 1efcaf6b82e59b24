"""Where does a JSON value end? Answered one character at a time, without validating it."""

from __future__ import annotations

import enum


class Scan(enum.Enum):
    MORE = 0  # the character belongs to the value, which goes on
    DONE = 1  # the character belongs to the value and ends it
    ENDED_BEFORE = 2  # the value (a number or literal) ended before this character


class JsonValueScanner:
    """Tracks strings, escapes and nesting of one JSON value from its first character.

    Objects, arrays and strings end at their closing character; numbers and the literals
    true/false/null end before the first whitespace, "," , "}" or "]". `text` holds the
    characters that belong to the value so far.
    """

    def __init__(self) -> None:
        self.text = ""
        self._depth = 0
        self._is_in_string = False
        self._is_escaped = False
        self._is_primitive = False

    def push(self, c: str) -> Scan:
        """Read the next character (the first must not be whitespace)."""
        if not self.text:
            self._is_primitive = c not in '"{['
        elif self._is_primitive and (c.isspace() or c in ",}]"):
            return Scan.ENDED_BEFORE
        self.text += c
        if self._is_primitive:
            return Scan.MORE
        if self._is_in_string:
            if self._is_escaped:
                self._is_escaped = False
            elif c == "\\":
                self._is_escaped = True
            elif c == '"':
                self._is_in_string = False
        elif c == '"':
            self._is_in_string = True
        elif c in "{[":
            self._depth += 1
        elif c in "}]":
            self._depth -= 1
        is_done = not self._is_in_string and self._depth <= 0
        return Scan.DONE if is_done else Scan.MORE
