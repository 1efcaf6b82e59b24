"""Refusal messages: name the JSON Schema keyword, or the line and column of a bad grammar."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import lark

from corral.grammars.param_error import ParamError

if TYPE_CHECKING:
    from corral.grammars.spec import GrammarSpec

# JSON Schema keywords, longest first so that e.g. "minContains" wins over "contains".
SCHEMA_KEYWORDS = sorted([
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems",
    "uniqueItems", "maxContains", "minContains", "maxProperties", "minProperties", "required",
    "dependentRequired", "dependencies", "allOf", "anyOf", "oneOf", "not", "if", "then", "else",
    "dependentSchemas", "prefixItems", "items", "additionalItems", "contains", "properties",
    "patternProperties", "additionalProperties", "propertyNames", "unevaluatedItems",
    "unevaluatedProperties", "$ref", "$dynamicRef", "$recursiveRef", "format",
    "contentEncoding", "contentMediaType", "contentSchema", "$dynamicAnchor", "$anchor", "$id",
    "$vocabulary",
], key=len, reverse=True)

# Phrases of backend messages that name a keyword without quoting it.
_HINTS = (("patternpropert", "patternProperties"), ("resource '", "$ref"),
          ("reference", "$ref"), ("intersection", "allOf"), ("format", "format"),
          ("regex", "pattern"))
_LLG_POSITION = re.compile(r"(?:^|\s|at )(\d+)\((\d+)\)")
_LARK_POSITION = re.compile(r"line (\d+),? col(?:umn)? (\d+)")


def keyword_in_message(message: str) -> str | None:
    """The JSON Schema keyword a backend's refusal message names, if any."""
    quoted = re.findall(r"[\"'`]([$A-Za-z]+)[\"'`]", message)
    for word in quoted:
        if word in SCHEMA_KEYWORDS:
            return word
    lowered = message.lower()
    for hint, keyword in _HINTS:
        if hint in lowered:
            return keyword
    found = []
    for keyword in SCHEMA_KEYWORDS:
        hit = re.search(rf"(?<![A-Za-z$]){re.escape(keyword)}(?![A-Za-z])", message)
        if hit and len(keyword) > 3:
            found.append((hit.start(), -len(keyword), keyword))
    return min(found)[2] if found else None


def json_schema_error(backend: str, message: str, keyword: str | None = None) -> ValueError:
    """A refusal of a JSON Schema, naming the keyword where one is known."""
    keyword = keyword or keyword_in_message(message)
    first = message.strip().splitlines()[0] if message.strip() else "refused"
    named = f"keyword '{keyword}' " if keyword else ""
    return ParamError(
        "structured_outputs.json", f"the {backend} backend cannot enforce {named}of this schema "
        f"({first})"
    )


def lark_syntax_error(text: str) -> tuple[str, int | None, int | None] | None:
    """Parse `text` as a Lark grammar; (message, line, column) of its error, None if it parses."""
    try:
        lark.Lark(text, parser="earley", lexer="dynamic")
    except lark.exceptions.UnexpectedInput as e:
        return str(e).strip().splitlines()[0], e.line, e.column
    except lark.exceptions.LarkError as e:
        message = str(e).strip()
        found = _LARK_POSITION.search(message)
        if found:
            return message.splitlines()[0], int(found.group(1)), int(found.group(2))
        return message.splitlines()[0], None, None
    return None


def grammar_error(spec: GrammarSpec, message: str) -> ValueError:
    """A refusal of a regex or Lark grammar; Lark errors carry line and column."""
    first = message.strip().splitlines()[0] if message.strip() else "refused"
    if spec.kind in ("regex", "choice"):
        details = [ln.strip()[6:].strip() for ln in message.splitlines()
                   if ln.strip().startswith("error:")]
        return ParamError(f"structured_outputs.{spec.kind}", f"invalid regex "
                          f"({details[0] if details else first})")
    line = column = None
    found = _LLG_POSITION.search(message)
    if found:
        line, column = int(found.group(1)), int(found.group(2))
    lark_found = lark_syntax_error(spec.text)
    if line is None and lark_found is not None:
        _, line, column = lark_found
    where = f" at line {line}, column {column}" if line is not None else ""
    detail = re.sub(r"^(?:at )?\d+\(\d+\):\s*", "", first)
    return ParamError("structured_outputs.grammar", f"invalid Lark grammar{where}: {detail}")
