"""The xgrammar backend: exact regex translation, fail-closed schemas, matcher details."""

from __future__ import annotations

import re

import pytest
import torch

from corral.engine.logits_process import allocate_bitmask, unpack_bits
from corral.engine.sampling_params import StructuredOutputsParams as S
from corral.grammars import GrammarCompiler
from corral.grammars.xgrammar_regex import to_xgrammar_regex

from .conftest import EOS_IDS, VOCAB_SIZE
from .instances import accepts_text

EOS = EOS_IDS[0]
XG = "xgrammar"

# Patterns whose classes xgrammar re-prints (escapes next to hex digits, a leading '^',
# astral characters) or whose escapes mean something else in its own dialect.
REGEXES = [
    (r"[\x01a]+", ["a", "a\x01a"], ["b", "\x1a"]),
    (r"[\^a]", ["^", "a"], ["\\", "b"]),
    (r"[\x{e9}a]x", ["éx", "ax"], ["\u0e9ax", "x"]),
    (r"\x{1F600}|[😀-😂]{2}", ["😀", "😁😂"], ["😃", "😀😃"]),
    (r"a.b", ["a b", "aéb", "a\rb"], ["a\nb", "ab"]),
    (r"\s\S", [" x", "\u3000x", "\x85y"], ["x ", "  ", "\ufeffx"]),
    (r"[^a-c\n]{2}", ["dé", "zz"], ["ab", "d\n"]),
    (r"a{2,3}(?:b|c)?", ["aa", "aaac"], ["a", "aaaa", "aab c"]),
]


@pytest.mark.parametrize(("regex", "good", "bad"), REGEXES)
def test_regex_agrees_with_llguidance(compiler, hf_tokenizer, regex, good, bad):
    ours = compiler.compile(S(regex=regex, backend=XG))
    reference = compiler.compile(S(regex=regex, backend="llguidance"))
    for text in good + bad:
        expected = accepts_text(reference, hf_tokenizer, text)
        assert expected == (text in good), text
        assert accepts_text(ours, hf_tokenizer, text) == expected, text


@pytest.mark.parametrize("regex", [r"\w+", r"\bfoo", "(?i)a", r"a^b", "a$b", r"[a-z&&[^b]]",
                                   r"\p{L}", "(?=a)a", "(?<=a)b", r"(a)\1", "a**"])
def test_inexact_regex_constructs_are_refused(compiler, regex):
    with pytest.raises(ValueError):
        to_xgrammar_regex(regex)
    with pytest.raises(ValueError, match="structured_outputs.regex"):
        compiler.compile(S(regex=regex, backend=XG))


def test_json_patterns_are_cut_to_unescaped_characters():
    assert to_xgrammar_regex('a"?', json_string=True) == "a"
    with pytest.raises(ValueError, match="matches no string"):
        to_xgrammar_regex(r'"\\', json_string=True)


@pytest.mark.parametrize(("schema", "keyword"), [
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "not": {"required": ["a"]}}, "not"),
    ({"type": "string", "format": "email"}, "format"),
    ({"oneOf": [{"type": "string"}, {"type": "string", "minLength": 2}]}, "oneOf"),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf"),
    ({"type": "string", "anyOf": [{"maxLength": 2}, {"minLength": 4}]}, "type"),
    ({"type": "object", "patternProperties": {"^a": {"type": "integer"}}}, "patternProperties"),
    ({"type": "number", "multipleOf": 0.5}, "multipleOf"),
    ({"type": "integer", "multipleOf": 3, "minimum": 0}, "multipleOf"),
    ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "maxLength"),
    ({"minimum": 3}, "minimum"),
    ({"$ref": "http://example.com/s.json"}, "$ref"),
    ({"type": "object", "minProperties": 2}, "minProperties"),
    ({"type": "number", "exclusiveMinimum": 1e10}, "exclusiveMinimum"),
    ({"type": "object", "properties": {'a"b': {"type": "integer"}}}, "properties"),
    ({"type": "string", "pattern": r"\bfoo"}, "pattern"),
    ({"type": "array", "contains": {"type": "integer"}}, "contains"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
    ({"if": {"type": "string"}, "then": {"minLength": 2}}, "if"),
])
def test_unenforceable_keyword_is_refused_by_name(compiler, schema, keyword):
    expected = re.escape(f"xgrammar backend cannot enforce keyword '{keyword}'")
    with pytest.raises(ValueError, match=expected):
        compiler.validate(S(json=schema, backend=XG))
    with pytest.raises(ValueError, match=expected):
        compiler.compile(S(json=schema, backend=XG))


def test_rewritten_schemas_are_enforced_exactly(compiler, hf_tokenizer):
    schema = {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "ip": {"type": "string", "format": "ipv4"},
        "day": {"type": "string", "format": "date"},
        "tag": {"type": "string", "minLength": 2, "maxLength": 3},
        "kind": {"type": "string", "enum": ["a", 1, "b"]},
    }, "required": ["n"], "additionalProperties": {"type": "integer"}}
    compiled = compiler.compile(S(json=schema, backend=XG))

    def accepts(text):
        return accepts_text(compiled, hf_tokenizer, text)

    assert accepts('{"id":"123e4567-e89b-12d3-a456-426614174000","ip":"10.0.0.255",'
                   '"day":"2024-02-29","tag":"😀😀","kind":"b","n":3}')
    assert accepts('{"n":-1}')
    assert not accepts("{}")  # "n" is required (it is not in properties)
    assert not accepts('{"n":"x"}')
    assert not accepts('{"id":"123e4567e89b12d3a456426614174000","n":1}')
    assert not accepts('{"ip":"10.0.0.01","n":1}')
    assert not accepts('{"day":"2023-02-29","n":1}')
    assert not accepts('{"tag":"😀","n":1}') and not accepts('{"tag":"abcd","n":1}')
    assert not accepts('{"kind":1,"n":1}')  # fails its sibling "type"


def test_json_is_compact_everywhere(compiler, hf_tokenizer):
    any_object = compiler.compile(S(json_object=True, backend=XG))
    assert accepts_text(any_object, hf_tokenizer, '{"a":[1,2],"b":{"c":1,"d":[{},[]]}}')
    assert not accepts_text(any_object, hf_tokenizer, '{"a":[1, 2]}')
    assert not accepts_text(any_object, hf_tokenizer, '{"a": 1}')


def test_lark_and_json_whitespace_are_refused(compiler, hf_tokenizer):
    with pytest.raises(ValueError, match="xgrammar backend cannot compile Lark"):
        compiler.compile(S(grammar='start: "a"\n', backend=XG))
    spaced = GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS, json_whitespace=r"[ ]?")
    try:
        with pytest.raises(ValueError, match="json_whitespace"):
            spaced.compile(S(json={"type": "integer"}, backend=XG))
    finally:
        spaced.shutdown()


def allowed(matcher) -> list[int]:
    bitmask = allocate_bitmask(1, VOCAB_SIZE)
    matcher.fill_bitmask(bitmask, 0)
    return unpack_bits(bitmask[0], VOCAB_SIZE).nonzero().flatten().tolist()


def test_special_tokens_never_stand_for_their_spelling(compiler, hf_tokenizer):
    matcher = compiler.compile(S(regex=r"[\s\S]*", backend=XG)).matcher()
    ids = set(allowed(matcher))
    specials = {i for i, t in hf_tokenizer.added_tokens_decoder.items() if t.special}
    assert EOS in ids and not (specials - {EOS}) & ids
    assert not matcher.accept_token(1) and matcher.is_error()


def test_forced_tokens_are_exact(compiler, hf_tokenizer):
    schema = {"type": "object", "properties": {"name": {"type": "string"}},
              "required": ["name"], "additionalProperties": False}
    matcher = compiler.compile(S(json=schema, backend=XG)).matcher()
    forced = matcher.forced_tokens()
    assert forced and '{"name":"'.startswith(hf_tokenizer.decode(forced))
    assert matcher.num_accepted == 0
    for token_id in forced:
        assert matcher.accept_token(token_id)
    whole = compiler.compile(S(choice=["a longer answer"], backend=XG)).matcher()
    assert whole.forced_tokens() == hf_tokenizer.encode("a longer answer",
                                                        add_special_tokens=False)


def test_rollback_reaches_far_back_and_validate_keeps_state(compiler, hf_tokenizer):
    items = ",".join(str(i) for i in range(40))
    compiled = compiler.compile(S(json={"type": "array", "items": {"type": "integer"}},
                                  backend=XG))
    ids = hf_tokenizer.encode(f"[{items}]", add_special_tokens=False)
    assert len(ids) > 40
    matcher = compiled.matcher()
    masks = []
    for token_id in ids:
        masks.append(allowed(matcher))
        assert matcher.accept_token(token_id)
    assert matcher.accept_token(EOS) and matcher.is_terminated()
    matcher.rollback(len(ids) - 2)  # EOS and all but two tokens, in one go
    assert matcher.num_accepted == 3 and allowed(matcher) == masks[3]
    assert matcher.validate_tokens(ids[3:] + [EOS]) == len(ids) - 2
    assert matcher.num_accepted == 3 and allowed(matcher) == masks[3]
    assert matcher.validate_tokens([ids[3], 1]) == 1  # a special token stops it


def test_bitmask_layout_matches_llguidance(compiler):
    masks = [allocate_bitmask(1, VOCAB_SIZE) for _ in range(2)]
    for backend, mask in zip(("llguidance", XG), masks, strict=True):
        compiler.compile(S(regex=r"[0-9]{2}x", backend=backend)).matcher().fill_bitmask(mask, 0)
    assert torch.equal(masks[0], masks[1])
