"""Named grammars: compiled and validated once at registration, reused by every request."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.grammars.matcher import CompiledGrammar
from corral.grammars.param_error import ParamError
from corral.grammars.spec import GrammarSpec, check_size, schema_to_text

if TYPE_CHECKING:
    from corral.grammars.compiler import GrammarCompiler

SYNTAXES = {"lark": "grammar", "regex": "regex", "json_schema": "json"}
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


@dataclass(frozen=True)
class RegisteredGrammar:
    """One registered grammar: its user-facing definition and its compiled form."""

    name: str
    syntax: str
    definition: Any
    spec: GrammarSpec
    compiled: CompiledGrammar

    def as_dict(self) -> dict:
        return {"name": self.name, "syntax": self.syntax, "definition": self.definition}


class GrammarRegistry:
    """Thread-safe name -> grammar map owned by a `GrammarCompiler`."""

    def __init__(self, compiler: GrammarCompiler) -> None:
        self._compiler = compiler
        self._entries: dict[str, RegisteredGrammar] = {}
        self._lock = threading.Lock()

    def register(self, name: str, definition: Any, syntax: str = "lark") -> RegisteredGrammar:
        """Validate and compile `definition`; ValueError (with position for Lark) if bad.

        `syntax` is "lark" (Lark text, llguidance extensions such as `%json` allowed),
        "regex", or "json_schema" (a dict or JSON text). Registering a name again with the
        same definition is a no-op; with another definition it is refused.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ParamError(
                "name", f"must be 1-128 characters of letters, digits, '_', '.', ':' or '-' "
                f"(got {name!r})")
        if syntax not in SYNTAXES:
            raise ParamError("syntax", f"must be one of {sorted(SYNTAXES)} (got {syntax!r})")
        kind = SYNTAXES[syntax]
        if kind == "json":
            text = schema_to_text(definition, field="definition")
        elif isinstance(definition, str):
            text = definition
        else:
            raise ParamError("definition", f"a {syntax} definition must be a string")
        try:
            check_size(kind, text)
        except ValueError as e:
            raise _as_definition(e) from None
        backend = self._compiler.default_backend
        if kind == "grammar":
            backend = "llguidance"
        spec = GrammarSpec(kind, text, backend)
        with self._lock:
            existing = self._entries.get(name)
        if existing is not None:
            if existing.spec.kind == kind and existing.spec.text == text:
                return existing
            raise ParamError("name", f"grammar {name!r} is already registered; unregister it first")
        try:
            compiled = self._compiler.compile(spec)
        except ValueError as e:
            raise _as_definition(e) from None
        entry = RegisteredGrammar(name, syntax, definition, spec, compiled)
        with self._lock:
            self._entries.setdefault(name, entry)
            return self._entries[name]

    def unregister(self, name: str) -> None:
        """Forget `name`; ValueError if it is not registered."""
        with self._lock:
            if self._entries.pop(name, None) is None:
                raise ParamError("grammar_name", f"no grammar named {name!r} is registered")

    def get(self, name: str) -> RegisteredGrammar:
        """The entry for `name`; ValueError naming it if unknown."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise ParamError("structured_outputs.grammar_name", f"unknown grammar {name!r}")
        return entry

    def list(self) -> list[dict]:
        """Registered grammars as dicts {name, syntax, definition}, sorted by name."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.name)
        return [e.as_dict() for e in entries]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _as_definition(error: ValueError) -> ParamError:
    """A refusal of the grammar's text, named for the field that holds it here."""
    if isinstance(error, ParamError):
        return error.renamed("definition")
    return ParamError("definition", str(error))
