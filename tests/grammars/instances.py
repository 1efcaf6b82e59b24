"""Feeding JSON instances to matchers, as the JSON-Schema-Test-Suite and MaskBench do."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corral.grammars import Matcher


def ordered_like_schema(instance: Any, schema: Any, root: Any, depth: int = 0) -> Any:
    """`instance` with object keys in the schema's `properties` order (best effort).

    Backends emit properties in schema order, so a valid instance is re-serialised that way
    before it is fed; the JSON value is unchanged.
    """
    if depth > 32 or not isinstance(schema, dict):
        return instance
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and len(schema) <= 3:
        target = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return ordered_like_schema(instance, target, root, depth + 1)
    for key in ("allOf", "anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and len(branches) == 1:
            return ordered_like_schema(instance, branches[0], root, depth + 1)
    if isinstance(instance, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        ordered = {k: ordered_like_schema(instance[k], props[k], root, depth + 1)
                   for k in props if k in instance}
        extra = schema.get("additionalProperties")
        for k, v in instance.items():
            if k not in ordered:
                ordered[k] = ordered_like_schema(v, extra, root, depth + 1)
        return ordered
    if isinstance(instance, list):
        prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
        items = schema.get("items")
        return [ordered_like_schema(v, prefix[i] if i < len(prefix) else items, root, depth + 1)
                for i, v in enumerate(instance)]
    return instance


def compact(instance: Any) -> str:
    return json.dumps(instance, separators=(",", ":"), ensure_ascii=False)


@dataclass
class FeedResult:
    is_consumed: bool  # every token was accepted
    can_end: bool  # EOS was accepted right after the text

    @property
    def is_accepted(self) -> bool:
        return self.is_consumed and self.can_end


def feed(matcher: Matcher, token_ids: list[int], eos_id: int) -> FeedResult:
    """Accept `token_ids` then EOS; stops at the first refused token."""
    for token_id in token_ids:
        if not matcher.accept_token(token_id):
            return FeedResult(False, False)
    return FeedResult(True, matcher.accept_token(eos_id))


def accepts_text(compiled, tokenizer, text: str, eos_id: int = 2) -> bool:
    """The text, tokenized as the model would emit it, is a complete output of the grammar."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return feed(compiled.matcher(), ids, eos_id).is_accepted
