"""Fail-closed check of a JSON Schema for the outlines-core backend.

outlines-core turns a schema into a regex by looking at one keyword per schema object (in
the order properties, allOf, anyOf, oneOf, prefixItems, enum, const, $ref, type) and
silently ignores the rest: `minimum`, `uniqueItems`, a `pattern` beside `minLength`, sibling
keywords of `anyOf`... This module walks the schema the way outlines-core does and refuses
(ValueError naming the keyword and its path) every assertion outlines-core would drop,
unless dropping it can only make the output stricter. Output generated from a schema that
passes is valid against the schema.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from corral.grammars.errors import json_schema_error

_DISPATCH = ("properties", "allOf", "anyOf", "oneOf", "prefixItems", "enum", "const", "$ref",
             "type")
_STRING_KW = {"minLength", "maxLength", "pattern", "format", "contentEncoding",
              "contentMediaType", "contentSchema"}
_NUMBER_KW = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
_ARRAY_KW = {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems",
             "contains", "minContains", "maxContains", "unevaluatedItems"}
_OBJECT_KW = {"properties", "required", "additionalProperties", "patternProperties",
              "propertyNames", "minProperties", "maxProperties", "dependentRequired",
              "dependentSchemas", "dependencies", "unevaluatedProperties"}
_GENERAL_KW = {"type", "enum", "const", "allOf", "anyOf", "oneOf", "not", "if", "then", "else",
               "$ref", "$dynamicRef", "$recursiveRef"}
ASSERTIONS = _STRING_KW | _NUMBER_KW | _ARRAY_KW | _OBJECT_KW | _GENERAL_KW
_FORMATS = {"date-time", "date", "time", "uuid", "uri", "email"}
# Regex pieces that may match a quote, a backslash or a control character.
_UNSAFE_ESCAPES = set("sSWDpPxuUnrtfv0bBAzZ\\\"")


class _Walker:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.ref_stack: list[str] = []
        self.validator = jsonschema.Draft202012Validator(root if isinstance(root, dict) else {})

    def refuse(self, keyword: str, path: str, why: str) -> ValueError:
        return json_schema_error("outlines", f"'{keyword}' at {path or '/'}: {why}", keyword)

    def walk(self, node: Any, path: str) -> None:
        if not isinstance(node, dict):
            raise self.refuse("type", path, "boolean schemas are not supported")
        present = set(node) & ASSERTIONS
        branch = next((k for k in _DISPATCH if k in node), None)
        if branch is None:
            if present:
                raise self.refuse(sorted(present)[0], path, "needs a 'type' for outlines")
            if path:
                # outlines-core leaves the any-value regex ungrouped inside other patterns.
                raise self.refuse("type", path, "a schema allowing any value must be the root")
            return
        getattr(self, "_" + branch.lstrip("$"))(node, path, present - {branch})

    def no_siblings(self, node: dict, path: str, others: set[str], allowed=frozenset()) -> None:
        extra = sorted(others - set(allowed))
        if extra:
            raise self.refuse(extra[0], path, "is ignored by outlines beside its other keywords")

    def _properties(self, node: dict, path: str, others: set[str]) -> None:
        types = node.get("type", "object")
        if "object" not in (types if isinstance(types, list) else [types]):
            raise self.refuse("type", path, "'properties' with a non-object type")
        props = node["properties"]
        missing = [r for r in node.get("required", []) if r not in props]
        if missing:
            raise self.refuse("required", path, f"required {missing[0]!r} is not in properties")
        # outlines emits only the listed properties, in order: ignoring additionalProperties
        # or unevaluatedProperties can only make the output stricter.
        self.no_siblings(node, path, others & (_OBJECT_KW | _GENERAL_KW),
                         {"type", "required", "additionalProperties", "unevaluatedProperties"})
        for name, sub in props.items():
            self.walk(sub, f"{path}/properties/{name}")

    def _allOf(self, node: dict, path: str, others: set[str]) -> None:
        if len(node["allOf"]) != 1:
            raise self.refuse("allOf", path, "outlines joins allOf branches as a sequence")
        self.no_siblings(node, path, others)
        self.walk(node["allOf"][0], f"{path}/allOf/0")

    def _anyOf(self, node: dict, path: str, others: set[str]) -> None:
        self.no_siblings(node, path, others)
        for i, sub in enumerate(node["anyOf"]):
            self.walk(sub, f"{path}/anyOf/{i}")

    def _oneOf(self, node: dict, path: str, others: set[str]) -> None:
        branches = node["oneOf"]
        if len(branches) > 1 and not _disjoint_types(branches):
            raise self.refuse("oneOf", path, "outlines treats oneOf as anyOf")
        self.no_siblings(node, path, others)
        for i, sub in enumerate(branches):
            self.walk(sub, f"{path}/oneOf/{i}")

    def _prefixItems(self, node: dict, path: str, others: set[str]) -> None:
        n = len(node["prefixItems"])
        if not node.get("minItems", 0) <= n <= node.get("maxItems", n):
            raise self.refuse("minItems", path, "outlines emits exactly the prefixItems")
        self.no_siblings(node, path, others & (_ARRAY_KW | _GENERAL_KW),
                         {"type", "items", "additionalItems", "unevaluatedItems", "minItems",
                          "maxItems"})
        for i, sub in enumerate(node["prefixItems"]):
            self.walk(sub, f"{path}/prefixItems/{i}")

    def _enum(self, node: dict, path: str, others: set[str], key: str = "enum") -> None:
        values = node[key] if key == "enum" else [node[key]]
        if not isinstance(values, list):
            raise self.refuse(key, path, "must be a list")
        checker = self.validator.evolve(schema=node)
        for value in values:
            if not checker.is_valid(value):
                raise self.refuse(key, path, f"value {value!r} fails the other keywords")

    def _const(self, node: dict, path: str, others: set[str]) -> None:
        self._enum(node, path, others, key="const")

    def _ref(self, node: dict, path: str, others: set[str]) -> None:
        self.no_siblings(node, path, others)
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.refuse("$ref", path, f"only local references are supported ({ref!r})")
        if ref in self.ref_stack:
            raise self.refuse("$ref", path, f"recursive reference {ref!r}")
        target = self.root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise self.refuse("$ref", path, f"cannot resolve {ref!r}")
            target = target[part]
        self.ref_stack.append(ref)
        self.walk(target, ref[1:])
        self.ref_stack.pop()

    def _type(self, node: dict, path: str, others: set[str]) -> None:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        general = others & (_GENERAL_KW - {"type"})
        if general:
            raise self.refuse(sorted(general)[0], path, "is not supported by outlines")
        for t in types:
            getattr(self, f"_type_{t}", self._type_other)(node, path, others)

    def _type_string(self, node: dict, path: str, others: set[str]) -> None:
        mine = others & _STRING_KW
        if "minLength" in mine or "maxLength" in mine:
            self.no_siblings(node, path, mine, {"minLength", "maxLength"})
        elif "pattern" in mine:
            self.no_siblings(node, path, mine, {"pattern"})
            why = _unsafe_pattern(node["pattern"])
            if why:
                raise self.refuse("pattern", path, why)
        elif "format" in mine:
            self.no_siblings(node, path, mine, {"format"})
            if node["format"] not in _FORMATS:
                raise self.refuse("format", path, f"format {node['format']!r} is not supported")
        else:
            self.no_siblings(node, path, mine)

    def _type_number(self, node: dict, path: str, others: set[str]) -> None:
        self.no_siblings(node, path, others & _NUMBER_KW)

    _type_integer = _type_number

    def _type_array(self, node: dict, path: str, others: set[str]) -> None:
        self.no_siblings(node, path, others & _ARRAY_KW, {"items", "minItems", "maxItems"})
        if isinstance(node.get("items"), dict):
            self.walk(node["items"], f"{path}/items")
        elif "items" in node:
            raise self.refuse("items", path, "must be a schema object for outlines")

    def _type_object(self, node: dict, path: str, others: set[str]) -> None:
        mine = others & _OBJECT_KW
        if not node.get("required"):
            mine.discard("required")
        self.no_siblings(node, path, mine,
                         {"additionalProperties", "minProperties", "maxProperties"})
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            self.walk(extra, f"{path}/additionalProperties")
        elif extra is False and node.get("minProperties", 0) > 0:
            raise self.refuse("minProperties", path, "unsatisfiable with additionalProperties")

    def _type_boolean(self, node: dict, path: str, others: set[str]) -> None:
        pass

    _type_null = _type_boolean

    def _type_other(self, node: dict, path: str, others: set[str]) -> None:
        raise self.refuse("type", path, f"unknown type {node['type']!r}")


def _disjoint_types(branches: list[Any]) -> bool:
    """True when each oneOf branch has one distinct JSON type (so at most one can match)."""
    seen: set[str] = set()
    for b in branches:
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            return False
        t = "number" if b["type"] == "integer" else b["type"]
        if t in seen:
            return False
        seen.add(t)
    return True


def _unsafe_pattern(pattern: Any) -> str | None:
    """Why `pattern` may not be pasted inside a JSON string by outlines; None if it may."""
    if not isinstance(pattern, str):
        return "must be a string"
    body = pattern
    if body.startswith("^") and body.endswith("$") and not body.endswith("\\$"):
        body = body[1:-1]
    i, in_class, prev, depth = 0, False, None, 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            if nxt in _UNSAFE_ESCAPES:
                return f"escape '\\{nxt}' may match a quote, backslash or control character"
            prev, i = nxt, i + 2
            continue
        if ch == '"' or ord(ch) < 0x20:
            return "contains a quote or control character"
        if ch in "^$" and not (in_class and ch == "$"):
            return "anchors are only supported as a leading ^ with a trailing $"
        if ch == "." and not in_class:
            return "'.' may match a quote or backslash"
        if not in_class and ch in "()|":
            depth += {"(": 1, ")": -1, "|": 0}[ch]
            if ch == "|" and depth == 0:
                return "a top-level '|' is not grouped by outlines; wrap it in (...)"
        if ch == "[":
            if in_class:
                return "nested character classes are not supported"
            in_class = True
            if body[i + 1:i + 2] == "^":
                return "negated character classes may match a quote or backslash"
        elif ch == "]" and in_class:
            in_class = False
        elif ch == "-" and in_class and prev is not None and body[i + 1:i + 2] not in ("", "]"):
            hi = body[i + 1]
            if hi == "\\":
                return "escaped range ends are not supported"
            if any(ord(prev) <= c <= ord(hi) for c in (0x22, 0x5C)) or ord(prev) < 0x20:
                return f"range '{prev}-{hi}' includes a quote, backslash or control character"
        prev = ch
        i += 1
    return None


def check_outlines_schema(schema: Any) -> None:
    """Raise ValueError naming the first keyword outlines-core would not enforce."""
    _Walker(schema).walk(schema, "")
