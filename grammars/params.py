"""`StructuredOutputsParams`: one structured-output constraint, as a request states it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corral.grammars.param_error import ParamError


@dataclass
class StructuredOutputsParams:
    """One structured-output constraint; exactly one field must be set.

    `json` is a JSON Schema (dict or JSON text), a pydantic model class, or an outlines
    type object; `json_object` asks for any JSON object (JSON mode); `regex`, `choice` and
    `grammar` (Lark text) are what they say; `grammar_name` names a registered grammar.
    `backend` picks the grammar backend for this request (None = the engine's default).
    """

    json: Any = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    grammar_name: str | None = None
    backend: str | None = None

    def __post_init__(self) -> None:
        kinds = self.kinds()
        if len(kinds) != 1:
            named = ", ".join(kinds) if kinds else "none"
            raise ParamError(
                "structured_outputs", "exactly one of json, json_object, regex, choice, grammar, "
                f"grammar_name must be set (got {named})"
            )
        if self.choice is not None:
            if not isinstance(self.choice, (list, tuple)) or not self.choice:
                raise ParamError("structured_outputs.choice", "must be a non-empty list of strings")
            if not all(isinstance(c, str) for c in self.choice):
                raise ParamError("structured_outputs.choice", "every choice must be a string")
            self.choice = list(self.choice)
        if self.regex is not None and not isinstance(self.regex, str):
            raise ParamError("structured_outputs.regex", "must be a string")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise ParamError("structured_outputs.grammar", "must be a string of Lark grammar text")
        if self.grammar_name is not None and not isinstance(self.grammar_name, str):
            raise ParamError("structured_outputs.grammar_name", "must be a string")
        if isinstance(self.json, str):
            try:
                self.json = json.loads(self.json)
            except json.JSONDecodeError as e:
                raise ParamError("structured_outputs.json", f"not valid JSON ({e})") from None

    def kinds(self) -> list[str]:
        """Names of the fields that are set."""
        set_fields = []
        for name in ("json", "regex", "choice", "grammar", "grammar_name"):
            if getattr(self, name) is not None:
                set_fields.append(name)
        if self.json_object:
            set_fields.append("json_object")
        return set_fields

    @property
    def kind(self) -> str:
        return self.kinds()[0]
