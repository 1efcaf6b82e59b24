"""Normalising a structured-output constraint into one canonical, hashable `GrammarSpec`.

A `StructuredOutputsParams` may carry a JSON Schema as a dict, JSON text, a pydantic model
class, or an outlines type object; this module turns all of them into a kind plus canonical
text, checks size caps, and turns a choice list into a regex alternation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corral.grammars.param_error import ParamError
from corral.grammars.params import StructuredOutputsParams
from corral.grammars.schema_rewrite import ascii_digits_regex

BACKENDS = ("llguidance", "outlines", "xgrammar")
KINDS = ("json", "json_object", "regex", "choice", "grammar", "grammar_name")

MAX_SPEC_BYTES = 1_000_000  # a JSON schema, Lark grammar or choice list
MAX_REGEX_CHARS = 20_000
MAX_CHOICES = 10_000

# Characters with a meaning in Rust-regex syntax (both backends parse that dialect).
_REGEX_META = set("\\.+*?()|[]{}^$#&-~")


@dataclass(frozen=True)
class GrammarSpec:
    """A constraint in canonical form.

    `text` is the canonical text of the constraint: compact JSON for `json` (property order
    kept: it fixes the output's property order), the pattern for `regex` and `choice` (a
    choice list is already turned into an alternation), Lark text for `grammar`, the name
    for `grammar_name`, "" for `json_object`. `backend` is None until resolved.
    """

    kind: str
    text: str
    backend: str | None = None

    def with_backend(self, backend: str) -> GrammarSpec:
        return GrammarSpec(self.kind, self.text, backend)


def normalize_spec(spec: StructuredOutputsParams | GrammarSpec) -> GrammarSpec:
    """Turn a `StructuredOutputsParams` into a `GrammarSpec`; ValueError naming the field."""
    if isinstance(spec, GrammarSpec):
        return spec
    if not isinstance(spec, StructuredOutputsParams):
        raise ParamError(
            "structured_outputs", f"expected StructuredOutputsParams, got {type(spec).__name__}"
        )
    backend = spec.backend
    if backend is not None and backend not in BACKENDS:
        raise ParamError("structured_outputs.backend",
                         f"must be one of {BACKENDS} (got {backend!r})")
    kind = spec.kind
    if kind == "json":
        kind, text = _normalize_json_field(spec.json)
    elif kind == "json_object":
        text = ""
    elif kind == "regex":
        text = spec.regex
    elif kind == "choice":
        kind, text = "choice", choice_to_regex(spec.choice)
    elif kind == "grammar":
        text = spec.grammar
    else:
        text = spec.grammar_name
    check_size(kind, text)
    if kind == "regex":
        text = ascii_digits_regex(text)
    return GrammarSpec(kind, text, backend)


def check_size(kind: str, text: str) -> None:
    """Refuse over-large constraints before any compiler sees them."""
    field = "choice" if kind == "choice" else kind
    if kind == "regex" and len(text) > MAX_REGEX_CHARS:
        raise ParamError(
            "structured_outputs.regex",
            f"{len(text)} characters is over the {MAX_REGEX_CHARS} limit"
        )
    size = len(text.encode("utf-8"))
    if size > MAX_SPEC_BYTES:
        raise ParamError(
            f"structured_outputs.{field}", f"{size} bytes is over the {MAX_SPEC_BYTES} byte limit"
        )
    if kind in ("regex", "grammar", "grammar_name") and not text:
        raise ParamError(f"structured_outputs.{field}", "must not be empty")


def canonical_json(value: Any) -> str:
    """Compact JSON text keeping key order (order matters: it fixes property order)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def schema_to_text(schema: Any, field: str = "structured_outputs.json") -> str:
    """A JSON Schema (dict, bool or JSON text) as canonical text; ValueError naming `field`."""
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ParamError(field, f"not valid JSON ({e})") from None
    if isinstance(schema, bool):
        return canonical_json(schema)
    if not isinstance(schema, dict):
        raise ParamError(field, f"a JSON Schema must be an object (got {type(schema).__name__})")
    try:
        return canonical_json(schema)
    except (TypeError, ValueError) as e:
        raise ParamError(field, f"schema is not JSON-serialisable ({e})") from None


def _normalize_json_field(value: Any) -> tuple[str, str]:
    """(kind, text) for the `json` field: schema dict/text, pydantic class or outlines type."""
    if isinstance(value, (dict, str, bytes, bool)):
        return "json", schema_to_text(value)
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        return "json", schema_to_text(value.model_json_schema())
    outlines_kind = _from_outlines_type(value)
    if outlines_kind is not None:
        return outlines_kind
    raise ParamError(
        "structured_outputs.json", "expected a JSON Schema dict or text, a pydantic model class "
        f"or an outlines type object (got {type(value).__name__})"
    )


def _from_outlines_type(value: Any) -> tuple[str, str] | None:
    """Duck-typed outlines `types` objects: JsonSchema, Regex, CFG and other regex terms."""
    module = type(value).__module__ or ""
    if not module.startswith("outlines"):
        return None
    name = type(value).__name__
    if name == "JsonSchema" and hasattr(value, "schema"):
        return "json", schema_to_text(value.schema)
    if name == "Regex" and isinstance(getattr(value, "pattern", None), str):
        return "regex", value.pattern
    if name == "CFG" and isinstance(getattr(value, "definition", None), str):
        return "grammar", value.definition
    try:
        from outlines.types.dsl import to_regex  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return "regex", to_regex(value)
    except Exception as e:  # noqa: BLE001 - outlines raises assorted errors for odd terms
        raise ParamError(
            "structured_outputs.json", f"cannot turn outlines {name} into a regex ({e})") from None


def regex_escape(text: str) -> str:
    """Escape `text` as a literal in Rust-regex syntax (what both backends read)."""
    out = []
    for ch in text:
        if ch in _REGEX_META:
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{{{ord(ch):X}}}")
        else:
            out.append(ch)
    return "".join(out)


def choice_to_regex(choices: list[str]) -> str:
    """An alternation matching exactly one of `choices`."""
    if len(choices) > MAX_CHOICES:
        raise ParamError("structured_outputs.choice",
                         f"{len(choices)} choices is over {MAX_CHOICES}")
    unique = list(dict.fromkeys(choices))
    return "(?:" + "|".join(regex_escape(c) for c in unique) + ")"
