"""Pieces of the Lark (llguidance dialect) text that tool and reasoning grammars are built of.

A format's marker (`<tool_call>`, `[TOOL_CALLS]`, `<|channel|>`, `<think>`) is often one
token of the model's vocabulary. llguidance sees such added tokens only as tokens, never as
the bytes they decode to, so a grammar must name them as tokens (`<[151657]>`); spelled out
as a string literal they would be written piece by piece, a text the model never saw.
`TokenMarkers` writes each marker the right way for one tokenizer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import llguidance

from corral.grammars.param_error import ParamError
from corral.grammars.params import StructuredOutputsParams
from corral.grammars.schema_rewrite import rewrite_schema

# The JSON layout of generated arguments (as `json.dumps` and chat templates' `tojson`
# write them), as llguidance JSON compile options.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# A JSON answer is compact, as `response_format` output is.
ANSWER_LAYOUT = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
# Any text: the body of a free-text lexeme (special tokens can never be inside one).
ANY_TEXT = "/(?s:.*)/"


def lit(text: str) -> str:
    """A Lark string literal for `text` (JSON string escapes are what llguidance reads)."""
    return json.dumps(text, ensure_ascii=False)


def regex_escape(text: str) -> str:
    """Escape regex metacharacters for a /.../ literal (Rust regex syntax)."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$/-&~#" else c for c in text)


def text_without(texts: list[str]) -> str:
    """A lexeme body: any text that contains none of `texts`.

    One marker whose first character does not recur in it (`<tool_call>`, `</think>`,
    `[TOOL_CALLS]`) gets a plain regex (`avoiding_regex`); others intersect with a
    complement, which llguidance matches as exactly but more slowly (no token slices).
    """
    texts = [t for t in texts if t]
    if len(texts) == 1 and (regex := avoiding_regex(texts[0])) is not None:
        return f"/{regex}/"
    body = ANY_TEXT
    for text in texts:
        body += f" & ~/(?s:.*){regex_escape(text)}(?s:.*)/"
    return body


def text_until(marker: str) -> str:
    """A lexeme body: any text that ends with its only `marker` (the text up to and with
    the first marker)."""
    if (regex := avoiding_regex(marker)) is not None:
        return f"/{regex}{_escape_all(marker)}/"
    quoted = regex_escape(marker)
    return f"/(?s:.*){quoted}/ & ~/(?s:.*){quoted}(?s:.+)/"


def nonempty_text_without(marker: str) -> str:
    """A lexeme body: any non-empty text that does not contain `marker`."""
    if (parts := _avoiding_parts(marker)) is not None:
        item, tail = parts
        if tail is None:
            return f"/(?:{item})+/"
        return f"/(?:{item})+(?:{tail})?|{tail}/"
    return f"/(?s:.+)/ & ~/(?s:.*){regex_escape(marker)}(?s:.*)/"


def avoiding_regex(marker: str) -> str | None:
    """A regex without intersection or complement for the texts that do not contain
    `marker`, or None when its first character recurs in it.

    Why: llguidance adds whole token slices (see the grammar backend) only inside lexemes
    without `&` and `~`; a free-text lexeme with them costs a full-vocabulary walk per step.
    """
    parts = _avoiding_parts(marker)
    if parts is None:
        return None
    item, tail = parts
    return f"(?:{item})*" if tail is None else f"(?:{item})*(?:{tail})?"


def _avoiding_parts(marker: str) -> tuple[str, str | None] | None:
    """(item, tail): marker-free text is `item*` then at most one `tail` (None: no tail).

    With c = marker[0] not in rest = marker[1:], a scan for the marker is in state k after
    matching its first k characters; c always leads back to state 1. `item` is a piece
    from state 0 back to state 0: a character other than c, or c, any loops through state
    1 (a partial match then c), then a partial match and a character that breaks it.
    `tail` ends inside a partial match.
    """
    if not marker or marker[0] in marker[1:]:
        return None
    c, rest = marker[0], marker[1:]
    first = _escape_all(c)
    if not rest:
        return f"[^{first}]", None
    prefixes = [_escape_all(rest[:k]) for k in range(len(rest))]
    breaks = "|".join(f"{p}[^{_escape_all(rest[k])}{first}]" for k, p in enumerate(prefixes))
    loops = "|".join(f"{p}{first}" for p in prefixes)
    partial = "|".join(p for p in prefixes if p)
    item = f"[^{first}]|{first}(?:{loops})*(?:{breaks})"
    tail = f"{first}(?:{loops})*(?:{partial})?" if partial else f"{first}(?:{loops})*"
    return item, tail


def _escape_all(text: str) -> str:
    """Every ASCII character as a `\\xHH` escape (safe in and out of character classes)."""
    return "".join(f"\\x{ord(ch):02X}" if ord(ch) < 128 else ch for ch in text)


@dataclass(frozen=True)
class TokenMarkers:
    """The markers that are single added tokens of one tokenizer, with their ids, and the
    ids of its ordinary (not added) tokens as an llguidance token set (`<[0-151642]>`)."""

    ids: dict[str, int] = field(default_factory=dict)
    text_tokens: str | None = None

    @classmethod
    def of(cls, tokenizer: Any, markers: tuple[str, ...]) -> TokenMarkers:
        """Look `markers` up in `tokenizer`'s added tokens (none without a tokenizer)."""
        if tokenizer is None:
            return cls()
        added = tokenizer.get_added_vocab()
        return cls({m: added[m] for m in markers if m in added},
                   _token_set(len(tokenizer), set(added.values())))

    def any_text_tokens(self, max_tokens: int, where: str = "max_reasoning_tokens") -> str:
        """A rule body: 0..`max_tokens` ordinary tokens, one token each (so a count of
        tokens, unlike llguidance's `max_tokens` lexemes, survives rollbacks)."""
        if self.text_tokens is None:
            raise ParamError(where, "needs the model's tokenizer")
        return f"{self.text_tokens}{{0,{max_tokens}}}"

    def is_token(self, marker: str) -> bool:
        return marker in self.ids

    def seq(self, text: str) -> str:
        """`text` as a Lark sequence: marker tokens as `<[id]>`, the rest as literals."""
        if not self.ids:
            return lit(text)
        pattern = "|".join(re.escape(m) for m in sorted(self.ids, key=len, reverse=True))
        pieces = []
        for i, piece in enumerate(re.split(f"({pattern})", text)):
            if i % 2:
                pieces.append(f"<[{self.ids[piece]}]>")
            elif piece:
                pieces.append(lit(piece))
        return " ".join(pieces) or '""'


def _token_set(vocab_size: int, excluded: set[int]) -> str:
    """`<[a-b,c-d]>`: the ids below `vocab_size` not in `excluded`, as ranges."""
    ranges, start = [], None
    for i in range(vocab_size + 1):
        inside = i < vocab_size and i not in excluded
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            ranges.append(f"{start}-{i - 1}" if i - 1 > start else str(start))
            start = None
    return f"<[{','.join(ranges)}]>"


def arguments_schema(parameters: dict[str, Any]) -> dict[str, Any]:
    """The schema compiled for a function's arguments: `parameters` rewritten for exact
    semantics (ECMA `pattern`s, exact `format`s; as `response_format` schemas are) plus the
    arguments layout."""
    schema = rewrite_schema(parameters)
    schema["x-guidance"] = dict(JSON_LAYOUT)
    return schema


def canonical(schema: dict[str, Any]) -> str:
    return json.dumps(schema, ensure_ascii=False)


def json_rule(schema: dict[str, Any]) -> str:
    """A Lark `%json` expression for `schema`."""
    return f"%json {canonical(schema)}"


@lru_cache(maxsize=1024)
def check_schema(schema_json: str, where: str) -> None:
    """Fail closed: a schema llguidance cannot enforce is refused, naming the field."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json)
    except ValueError as e:
        raise ParamError(where, str(e)) from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ParamError(where, f"cannot be enforced ({messages[0]})")


def answer_schema(answer: StructuredOutputsParams) -> dict[str, Any]:
    """The schema of a JSON answer (a JSON schema or any JSON object), laid out as
    `response_format` output."""
    if answer.json_object:
        schema: Any = {"type": "object"}
    elif answer.json is not None and isinstance(answer.json, dict):
        schema = rewrite_schema(answer.json)
    else:
        raise ParamError("response_format", "only a JSON schema or a JSON object can be "
                                            "combined with tools")
    schema = dict(schema)
    schema["x-guidance"] = dict(ANSWER_LAYOUT)
    check_schema(canonical(schema), "response_format.json_schema.schema")
    return schema


def answer_rule(answer: StructuredOutputsParams, where: str) -> str:
    """A Lark expression for the answer after reasoning: a JSON schema or object, a regex
    or a choice. A Lark grammar of its own cannot be nested, so it is refused (`where`)."""
    if answer.json_object or isinstance(answer.json, dict):
        return json_rule(answer_schema(answer))
    if answer.regex is not None:
        return "/" + answer.regex.replace("/", "\\/") + "/"
    if answer.choice is not None:
        return "(" + " | ".join(lit(c) for c in answer.choice) + ")"
    raise ParamError(where, f"a {answer.kind} constraint cannot follow the model's reasoning; "
                            "use a JSON schema, a regex or a choice, or turn reasoning off "
                            "(chat_template_kwargs enable_thinking false)")
