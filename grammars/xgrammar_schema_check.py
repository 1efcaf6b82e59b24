"""Fail-closed check of a JSON Schema for xgrammar, and the rewrite xgrammar needs.

xgrammar reads one keyword family per schema object, in the order $ref, const, enum, anyOf,
oneOf, allOf, type, object keywords, array keywords, and silently drops the rest: siblings of
those applicators, `not`, `if`, `uniqueItems`, `contains`, `patternProperties` (it lets any
key through beside the patterns), `multipleOf` on numbers, a `pattern` beside a length or
format... It also takes a non-disjoint `oneOf` as `anyOf`, a non-local `$ref` as "anything",
and pastes property names and string constraints into the JSON text unescaped.

`check_xgrammar_schema` walks the schema the way xgrammar does and refuses (ValueError
naming the keyword and path) what it would not enforce. What it keeps it rewrites for exact
enforcement: string constraints become one pattern in xgrammar's dialect (`to_xgrammar_regex`,
JSON-unescaped characters only); a required property missing from `properties` is added with
the `additionalProperties` schema; enum values failing their (ignored) siblings are dropped.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

from corral.grammars.errors import json_schema_error
from corral.grammars.xgrammar_regex import to_xgrammar_regex

_STRING_KW = {"minLength", "maxLength", "pattern", "format"}
_NUMBER_KW = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
_ARRAY_KW = {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems",
             "contains", "minContains", "maxContains", "unevaluatedItems"}
_OBJECT_KW = {"properties", "required", "additionalProperties", "patternProperties",
              "propertyNames", "minProperties", "maxProperties", "dependentRequired",
              "dependentSchemas", "dependencies", "unevaluatedProperties"}
_GENERAL_KW = {"type", "enum", "const", "allOf", "anyOf", "oneOf", "not", "if", "then", "else",
               "$ref", "$dynamicRef", "$recursiveRef"}
ASSERTIONS = _STRING_KW | _NUMBER_KW | _ARRAY_KW | _OBJECT_KW | _GENERAL_KW
# Per type, the keywords xgrammar enforces (checked further below) beside "type".
_ENFORCED = {
    "string": {"pattern"},  # lengths and formats are turned into the pattern first
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "boolean": set(), "null": set(),
    "array": {"items", "prefixItems", "minItems", "maxItems", "unevaluatedItems"},
    "object": {"properties", "required", "additionalProperties", "unevaluatedProperties",
               "minProperties", "maxProperties"},
}
_OWN = {"string": _STRING_KW, "integer": _NUMBER_KW, "number": _NUMBER_KW, "array": _ARRAY_KW,
        "object": _OBJECT_KW, "boolean": set(), "null": set()}
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_FORMATS = {
    "uuid": "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}",
    "ipv4": rf"{_OCTET}(?:\.{_OCTET}){{3}}",
}
_INT64 = 2**63 - 1
_EXCLUSIVE_LIMIT = 2.0**33  # a double's ulp there is 2**-19 > 1e-6, xgrammar's finest step
_INCLUSIVE_LIMIT = 2.0**53  # a bound there may not be a double (validators compare exactly)
Path = tuple[str, ...]  # JSON pointer parts from the root


class _Walker:
    """Checks (and rewrites in place) `root`; `original` is the same schema before any
    rewrite (values are validated against it: rewritten patterns have other semantics)."""

    def __init__(self, root: Any, original: Any) -> None:
        self.root = root
        self.original = original
        self.seen: set[int] = set()  # ids of nodes already checked (and rewritten)
        draft = jsonschema.validators.validator_for(original, jsonschema.Draft202012Validator)
        self.validator = draft(original if isinstance(original, dict) else {})

    def refuse(self, keyword: str, path: Path, why: str) -> ValueError:
        where = "/" + "/".join(path)
        return json_schema_error("xgrammar", f"'{keyword}' at {where}: {why}", keyword)

    def walk(self, node: Any, path: Path) -> None:
        if node is True:
            return
        if not isinstance(node, dict):
            raise self.refuse("type", path, "only object schemas and `true` are supported")
        if id(node) in self.seen:
            return
        self.seen.add(id(node))
        if "$id" in node and node is not self.root:
            raise self.refuse("$id", path, "a nested $id changes how references resolve")
        present = set(node) & ASSERTIONS
        for branch in ("$ref", "const", "enum", "anyOf", "oneOf", "allOf"):
            if branch in node:
                method = "values" if branch in ("const", "enum") else branch.lstrip("$")
                getattr(self, "_" + method)(node, path, present - {branch}, branch)
                return
        types = node.get("type")
        if types is None:
            if present & {"properties", "additionalProperties", "unevaluatedProperties"}:
                types = "object"  # xgrammar then allows objects only: stricter
            elif present & {"items", "prefixItems", "unevaluatedItems"}:
                types = "array"
            elif present:
                raise self.refuse(sorted(present)[0], path, "needs a 'type' for xgrammar")
            else:
                return
        if types == []:
            raise self.refuse("type", path, "an empty type list allows nothing")
        for t in types if isinstance(types, list) else [types]:
            self.check_type(node, t, path, present - {"type"})

    def siblings(self, node: dict, path: Path, others: set[str], beside: str) -> None:
        if others:
            raise self.refuse(sorted(others)[0], path, f"is ignored by xgrammar beside '{beside}'")

    def _ref(self, node: dict, path: Path, others: set[str], key: str) -> None:
        self.siblings(node, path, others, "$ref")
        ref = node["$ref"]
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")) or \
                "~" in ref or "%" in ref:
            raise self.refuse("$ref", path, f"only local JSON pointers are supported ({ref!r})")
        parts = tuple(p for p in ref[2:].split("/") if p)
        target = _resolve(self.root, parts, through_lists=False)  # as xgrammar resolves
        if target is None:
            raise self.refuse("$ref", path, f"cannot resolve {ref!r}")
        self.walk(target, parts)

    def _values(self, node: dict, path: Path, others: set[str], key: str) -> None:
        """const / enum: xgrammar ignores the siblings, so values failing them are dropped."""
        values = [node[key]] if key == "const" else node[key]
        if not isinstance(values, list) or not values:
            raise self.refuse(key, path, "must be a non-empty list")
        checker = self.validator.evolve(schema=_resolve(self.original, path))
        kept = [v for v in values if checker.is_valid(v)]
        if not kept:
            raise self.refuse(key, path, "Unsatisfiable: no value passes the other keywords")
        for value in kept:
            if _has_wide_int(value):
                raise self.refuse(key, path, "integers beyond 64 bits are not kept exactly")
        if key == "enum":
            node["enum"] = kept

    def _anyOf(self, node: dict, path: Path, others: set[str], key: str) -> None:
        """anyOf, oneOf (with branches of distinct types) and single-branch allOf."""
        self.siblings(node, path, others, key)
        branches = node[key]
        if not isinstance(branches, list) or not branches:
            raise self.refuse(key, path, "must be a non-empty list")
        if key == "oneOf" and len(branches) > 1 and not _disjoint(branches):
            raise self.refuse(key, path, "xgrammar takes overlapping branches as anyOf")
        if key == "allOf" and len(branches) != 1:
            raise self.refuse(key, path, "xgrammar enforces only a single allOf branch")
        for i, sub in enumerate(branches):
            self.walk(sub, (*path, key, str(i)))

    _oneOf = _allOf = _anyOf

    def check_type(self, node: dict, t: Any, path: Path, others: set[str]) -> None:
        if t not in _ENFORCED:
            raise self.refuse("type", path, f"unknown type {t!r}")
        mine = others & _OWN[t]
        general = others - _STRING_KW - _NUMBER_KW - _ARRAY_KW - _OBJECT_KW
        if t == "string":
            self.string(node, path, mine)
            mine = {"pattern"} if "pattern" in node else set()
        elif t == "array":
            mine -= self.array(node, path, mine)
        elif t == "object":
            mine -= self.object(node, path, mine)
        elif t in ("integer", "number"):
            self.number_bounds(node, path, mine, t)
        extra = sorted(general | (mine - _ENFORCED[t]))
        if extra:
            raise self.refuse(extra[0], path, f"is not enforced by xgrammar for type {t!r}")

    def string(self, node: dict, path: Path, mine: set[str]) -> None:
        """Fold format / lengths into one xgrammar pattern (the only one it enforces)."""
        if len(mine & {"format", "pattern"}) + bool(mine & {"minLength", "maxLength"}) > 1:
            before = set(_resolve(self.original, path) or {})
            first = "format" if "format" in before else sorted(mine - {"pattern"})[0]
            raise self.refuse(first, path, "xgrammar enforces only one of pattern, format "
                                           "and lengths on a string")
        if "format" in mine:
            fmt = node.pop("format")
            if fmt not in _FORMATS:
                raise self.refuse("format", path, f"format {fmt!r} is not supported")
            node["pattern"] = _FORMATS[fmt]
        if mine & {"minLength", "maxLength"}:
            low, high = node.pop("minLength", 0), node.pop("maxLength", None)
            if not isinstance(low, int) or not (high is None or isinstance(high, int)):
                raise self.refuse("minLength", path, "lengths must be integers")
            if high is not None and low > high:
                raise self.refuse("minLength", path, "Unsatisfiable: minLength > maxLength")
            bound = "" if high is None else str(high)
            node["pattern"] = f"[\\s\\S]{{{low},{bound}}}"  # any character, counted
        if "pattern" in node:
            try:
                node["pattern"] = to_xgrammar_regex(node["pattern"], json_string=True)
            except ValueError as e:
                raise self.refuse("pattern", path, str(e)) from None

    def number_bounds(self, node: dict, path: Path, mine: set[str], t: str) -> None:
        """Integers: whole 64-bit bounds, a whole multipleOf without bounds. Numbers: xgrammar
        compares decimals (6 fraction digits) where validators compare doubles, so past 2**33
        a decimal just inside an exclusive bound parses to the bound itself."""
        step = node.get("multipleOf") if "multipleOf" in mine else None
        if step is not None and (t == "number" or not isinstance(step, int) or step < 1
                                 or mine & (_NUMBER_KW - {"multipleOf"})):
            raise self.refuse("multipleOf", path, "xgrammar enforces only a whole multipleOf "
                                                  "of an integer without bounds")
        for key in sorted(mine - {"multipleOf"}):
            bound = node[key]
            if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                raise self.refuse(key, path, "must be a number")
            if t == "integer" and (isinstance(bound, float) and not bound.is_integer()
                                   or abs(bound) > _INT64):
                raise self.refuse(key, path, "xgrammar takes only whole 64-bit integer bounds")
            limit = _EXCLUSIVE_LIMIT if key.startswith("exclusive") else _INCLUSIVE_LIMIT
            if t == "number" and abs(bound) >= limit:
                raise self.refuse(key, path, f"bounds of magnitude {limit:g} or more are not "
                                             "enforced exactly by xgrammar")

    def array(self, node: dict, path: Path, mine: set[str]) -> set[str]:
        """Walk the item schemas; the keywords that are harmless no-ops here."""
        noop = {"additionalItems"} & mine  # 2020-12 ignores it; older drafts need array items
        if node.get("uniqueItems") is False:
            noop.add("uniqueItems")
        if "contains" not in node:
            noop |= {"minContains", "maxContains"} & mine  # no-ops without contains
        if isinstance(node.get("items"), list):
            raise self.refuse("items", path, "array-form items is not supported")
        for key in ("items", "unevaluatedItems"):
            if isinstance(node.get(key), dict):
                self.walk(node[key], (*path, key))
        for i, sub in enumerate(node.get("prefixItems") or []):
            self.walk(sub, (*path, "prefixItems", str(i)))
        return noop

    def object(self, node: dict, path: Path, mine: set[str]) -> set[str]:
        """Walk the property schemas; the keywords that are harmless no-ops here."""
        props = node.get("properties") or {}
        required = node.get("required") or []
        if not isinstance(required, list) or not isinstance(props, dict):
            raise self.refuse("required", path, "must be a list beside a properties object")
        for name in list(props) + required:
            if not isinstance(name, str) or any(c in name for c in '"\\') or \
                    any(ord(c) < 0x20 for c in name):
                raise self.refuse("properties", path, f"property name {name!r} needs JSON "
                                                      "escapes, which xgrammar does not write")
        for key in ("additionalProperties", "unevaluatedProperties"):
            if isinstance(node.get(key), dict):
                self.walk(node[key], (*path, key))
        if "additionalProperties" not in node and "unevaluatedProperties" in node:
            # Without in-place applicators both mean the same; xgrammar reads only the first.
            node["additionalProperties"] = node.pop("unevaluatedProperties")
        extra = node.get("additionalProperties", True)
        for name in required:
            if name not in props:  # xgrammar enforces `required` on listed properties only
                if extra is False:
                    raise self.refuse("required", path, f"Unsatisfiable: {name!r} is required "
                                                        "but no additional property is allowed")
                props[name] = {} if extra is True else extra
                node["properties"] = props
        if extra is not False and node.get("minProperties", 0) > len(required):
            raise self.refuse("minProperties", path, "xgrammar counts repeated additional keys, "
                                                     "which a JSON parser merges")
        for name, sub in props.items():
            self.walk(sub, (*path, "properties", name))  # added ones were walked above
        return set()


def _resolve(root: Any, parts: Path, through_lists: bool = True) -> Any:
    """The node at `parts` below `root`; None when there is none."""
    node = root
    for part in parts:
        if through_lists and isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _has_wide_int(value: Any) -> bool:
    """Whether `value` holds an integer xgrammar's JSON reader would turn into a double."""
    if isinstance(value, (list, dict)):
        return any(map(_has_wide_int, value.values() if isinstance(value, dict) else value))
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT64


def _disjoint(branches: list[Any]) -> bool:
    """True when each oneOf branch has one distinct JSON type (so at most one can match)."""
    types = [b.get("type") if isinstance(b, dict) else None for b in branches]
    if not all(isinstance(t, str) for t in types):
        return False
    kinds = ["number" if t == "integer" else t for t in types]
    return len(set(kinds)) == len(kinds)


def check_xgrammar_schema(schema: Any, original: Any) -> Any:
    """A copy of `schema` (`original` after `prepared_schema`) that xgrammar enforces exactly;
    ValueError naming the first keyword it would not enforce."""
    root = copy.deepcopy(schema)
    _Walker(root, original).walk(root, ())
    return root
