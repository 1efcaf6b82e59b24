"""Every tool call the server returns, checked against the request's tools for `/metrics`.

Constrained calls are valid by construction; calls can still be wrong where the grammar is
off (`constrain_tool_calls: false`) or cut by a limit, and the counts show it: `valid` (a
known function, arguments that parse and validate against its `parameters`),
`unknown_tool`, `invalid_arguments`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema


class ToolCallAudit:
    """Checks the calls of one request's outputs; `count(outcome)` records each."""

    def __init__(self, tools: list[dict[str, Any]] | None, count: Callable[[str], None]
                 ) -> None:
        self._count = count
        self._schemas: dict[str, Any] = {}
        for tool in tools or []:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                self._schemas[function["name"]] = function.get("parameters") or {}
        self._validators: dict[str, Any] = {}

    def outcome(self, name: str, arguments: str) -> str:
        """"valid", "unknown_tool" or "invalid_arguments" for one call."""
        if name not in self._schemas:
            return "unknown_tool"
        try:
            value = json.loads(arguments)
        except (TypeError, ValueError):
            return "invalid_arguments"
        validator = self._validators.get(name)
        if validator is None:
            schema = self._schemas[name]
            try:
                cls = jsonschema.validators.validator_for(schema)
                validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
            except Exception:  # noqa: BLE001 - a schema jsonschema cannot read: JSON only
                validator = False
            self._validators[name] = validator
        if validator is False:
            return "valid" if isinstance(value, dict) else "invalid_arguments"
        return "valid" if validator.is_valid(value) else "invalid_arguments"

    def record(self, calls: list[Any]) -> None:
        for call in calls:
            self._count(self.outcome(call.name, call.arguments))


class AuditedParser:
    """An output parser whose calls are recorded once, when it finishes."""

    def __init__(self, inner: Any, audit: ToolCallAudit) -> None:
        self._inner = inner
        self._audit = audit
        self._recorded = False

    def feed(self, text: str) -> list[Any]:
        return self._inner.feed(text)

    def finish(self, truncated: bool = False) -> list[Any]:
        events = self._inner.finish(truncated)
        if not self._recorded:
            self._recorded = True
            self._audit.record(self._inner.tool_calls)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
