"""The tool grammar, run through llguidance on the real tokenizer: valid calls pass, others fail."""

from __future__ import annotations

import json

import pytest

from corral.tools import format_call, tool_call_constraint

from .grammar_check import GrammarCheck, is_valid_output, match_text

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
    {
        "type": "function",
        "function": {
            "name": "get",  # a prefix of both other names
            "parameters": {
                "type": "object",
                "properties": {"url": {"type": "string", "pattern": "^https?://[a-z.]+/?#?$"}},
                "required": ["url"],
            },
        },
    },
]

PARIS = format_call("get_weather", {"city": "Paris", "unit": "celsius"})
ROME = format_call("get_weather", {"city": "Rome", "days": 3})
TIME = format_call("get_time", {})
GET = format_call("get", {"url": "https://example.org/#"})

BAD_CALLS = {
    "unknown function": format_call("get_wether", {"city": "Paris"}),
    "wrong type": format_call("get_weather", {"city": 3}),
    "missing required": format_call("get_weather", {"unit": "celsius"}),
    "enum violated": format_call("get_weather", {"city": "Oslo", "unit": "kelvin"}),
    "bound violated": format_call("get_weather", {"city": "Oslo", "days": 9}),
    "extra property": format_call("get_weather", {"city": "Oslo", "wind": True}),
    "pattern violated": format_call("get", {"url": "ftp://x"}),
    "no-parameter tool given arguments": format_call("get_time", {"tz": "UTC"}),
    "not JSON": '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>',
    "loose whitespace": PARIS.replace('"city": ', '"city":    '),
}


def grammar(tool_choice, parallel=True):
    return tool_call_constraint(TOOLS, tool_choice, parallel).grammar


@pytest.mark.parametrize("choice", ["auto", "required"])
@pytest.mark.parametrize("call", [PARIS, ROME, TIME, GET])
def test_each_valid_call_is_accepted_and_may_end(ll_tokenizer, hf_tokenizer, choice, call):
    result = match_text(ll_tokenizer, hf_tokenizer, grammar(choice), call)
    assert result.is_consumed, result.error
    assert result.is_accepting


@pytest.mark.parametrize("choice", ["auto", "required",
                                    {"type": "function", "function": {"name": "get_weather"}}])
@pytest.mark.parametrize("reason", sorted(BAD_CALLS))
def test_invalid_calls_are_rejected(ll_tokenizer, hf_tokenizer, choice, reason):
    assert not is_valid_output(ll_tokenizer, hf_tokenizer, grammar(choice), BAD_CALLS[reason])


def test_required_refuses_plain_text(ll_tokenizer, hf_tokenizer):
    g = grammar("required")
    assert not match_text(ll_tokenizer, hf_tokenizer, g, "The weather is nice.").is_consumed
    assert not is_valid_output(ll_tokenizer, hf_tokenizer, g, "")
    assert not is_valid_output(ll_tokenizer, hf_tokenizer, g, "Sure.\n" + PARIS)
    assert not is_valid_output(ll_tokenizer, hf_tokenizer, g, PARIS + "\nDone.")


def test_auto_accepts_text_or_calls(ll_tokenizer, hf_tokenizer):
    g = grammar("auto")
    for text in ["It is sunny in Paris today.", "", "Use <b>bold</b> or <tool> tags.\nOk",
                 PARIS, "Let me check.\n" + PARIS, PARIS + "\n" + ROME + "\n" + TIME]:
        assert is_valid_output(ll_tokenizer, hf_tokenizer, g, text), text


def test_auto_constrains_everything_after_the_marker(ll_tokenizer, hf_tokenizer):
    g = grammar("auto")
    for text in ["I will call <tool_call> now", "<tool_call>\nhello", PARIS + " Done.",
                 "x " + BAD_CALLS["wrong type"]]:
        assert not is_valid_output(ll_tokenizer, hf_tokenizer, g, text), text


def test_parallel_calls_follow_parallel_tool_calls(ll_tokenizer, hf_tokenizer):
    two = PARIS + "\n" + TIME
    for choice in ("auto", "required"):
        assert is_valid_output(ll_tokenizer, hf_tokenizer, grammar(choice, True), two)
        single = grammar(choice, False)
        assert is_valid_output(ll_tokenizer, hf_tokenizer, single, PARIS)
        assert not is_valid_output(ll_tokenizer, hf_tokenizer, single, two)
        # After one call, only the end may follow.
        result = match_text(ll_tokenizer, hf_tokenizer, single, PARIS + "\n")
        assert not result.is_consumed


def test_named_choice_forces_exactly_that_call(ll_tokenizer, hf_tokenizer):
    g = grammar({"type": "function", "function": {"name": "get_weather"}}, parallel=True)
    assert is_valid_output(ll_tokenizer, hf_tokenizer, g, PARIS)
    for text in [TIME, GET, PARIS + "\n" + ROME, "Paris is sunny."]:
        assert not is_valid_output(ll_tokenizer, hf_tokenizer, g, text), text


def test_number_of_parallel_calls_is_bounded(ll_tokenizer, hf_tokenizer):
    g = tool_call_constraint(TOOLS, "required", True, max_parallel_calls=3).grammar
    assert is_valid_output(ll_tokenizer, hf_tokenizer, g, "\n".join([PARIS] * 3))
    assert not is_valid_output(ll_tokenizer, hf_tokenizer, g, "\n".join([PARIS] * 4))


def test_forced_call_forces_the_fixed_text(ll_tokenizer, hf_tokenizer):
    # With one function and a named choice, everything up to the argument values is forced.
    import llguidance

    g = grammar({"type": "function", "function": {"name": "get_weather"}})
    matcher = llguidance.LLMatcher(ll_tokenizer, g, log_level=0)
    forced = matcher.compute_ff_bytes().decode()
    assert forced.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"')


def test_unicode_and_escapes_in_arguments(ll_tokenizer, hf_tokenizer):
    call = format_call("get_weather", {"city": 'Zürich "old town"\n東京'})
    assert is_valid_output(ll_tokenizer, hf_tokenizer, grammar("required"), call)
    args = json.loads(call.split("\n")[1])["arguments"]
    assert args["city"].startswith("Zürich")


def test_recursive_ref_schemas_are_enforced(ll_tokenizer, hf_tokenizer):
    node = {"type": "object", "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["v"], "additionalProperties": False}
    params = {"type": "object", "properties": {"tree": {"$ref": "#/$defs/node"}},
              "required": ["tree"], "$defs": {"node": node}}
    tools = [{"type": "function", "function": {"name": "walk", "parameters": params}}]
    check = GrammarCheck(ll_tokenizer, hf_tokenizer,
                         tool_call_constraint(tools, "required").grammar)
    assert check.accepts(format_call("walk", {"tree": {"v": 1, "kids": [{"v": 2, "kids": []}]}}))
    assert not check.accepts(format_call("walk", {"tree": {"v": 1, "kids": [{"v": "2"}]}}))


def _single_tool_check(ll_tokenizer, hf_tokenizer, name, properties):
    params = {"type": "object", "properties": properties, "required": sorted(properties),
              "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": name, "parameters": params}}]
    return GrammarCheck(ll_tokenizer, hf_tokenizer,
                        tool_call_constraint(tools, "required").grammar)


def test_date_format_in_arguments_checks_leap_years(ll_tokenizer, hf_tokenizer):
    # The arguments schema gets the same exact-format rewrite as `response_format`.
    check = _single_tool_check(ll_tokenizer, hf_tokenizer, "book",
                               {"day": {"type": "string", "format": "date"}})
    assert check.accepts(format_call("book", {"day": "2020-02-29"}))
    assert check.accepts(format_call("book", {"day": "2000-02-29"}))
    assert not check.accepts(format_call("book", {"day": "2021-02-29"}))
    assert not check.accepts(format_call("book", {"day": "1900-02-29"}))


@pytest.mark.parametrize(("pattern", "good", "bad"), [
    ("^\\d+$", "123", "\u0663"),  # ECMA `\d` is ASCII only (U+0663 is an Arabic-Indic 3)
    ("^a.b$", "a-b", "a\rb"),  # ECMA `.` excludes line terminators; Rust's takes `\r`
    ("^\\S+$", "ab", "a\ufeffb"),  # ECMA `\s` includes U+FEFF, so `\S` refuses it
])
def test_pattern_in_arguments_has_ecma_semantics(ll_tokenizer, hf_tokenizer, pattern, good, bad):
    check = _single_tool_check(ll_tokenizer, hf_tokenizer, "match",
                               {"s": {"type": "string", "pattern": pattern}})
    assert check.accepts(format_call("match", {"s": good}))
    assert not check.accepts(format_call("match", {"s": bad}))


ANSWER = {"type": "object", "properties": {"summary": {"type": "string"},
                                           "temperature": {"type": "number"}},
          "required": ["summary"], "additionalProperties": False}


def answer_grammar(tool_choice, answer=None):
    from corral.grammars.params import StructuredOutputsParams

    answer = answer or StructuredOutputsParams(json=ANSWER)
    return tool_call_constraint(TOOLS, tool_choice, True, answer=answer).grammar


def test_auto_with_a_response_format_allows_calls_or_the_json_answer(ll_tokenizer,
                                                                      hf_tokenizer):
    check = GrammarCheck(ll_tokenizer, hf_tokenizer, answer_grammar("auto"))
    for text in [PARIS, PARIS + "\n" + TIME, '{"summary":"Sunny"}',
                 '{"summary":"Sunny","temperature":21.5}']:
        assert check.accepts(text), text
    for text in ["It is sunny in Paris today.", "", '{"temperature":21.5}',
                 '{"summary":"Sunny","wind":3}', "Let me check.\n" + PARIS,
                 '{"summary":"Sunny"}\n' + PARIS, PARIS + '\n{"summary":"Sunny"}',
                 '{"summary": "loose whitespace"}']:
        assert not check.accepts(text), text


def test_forced_calls_ignore_the_response_format(ll_tokenizer, hf_tokenizer):
    for choice in ["required", {"type": "function", "function": {"name": "get_weather"}}]:
        check = GrammarCheck(ll_tokenizer, hf_tokenizer, answer_grammar(choice))
        assert check.accepts(PARIS)
        assert not check.accepts('{"summary":"Sunny"}')


def test_json_object_answer_and_bad_answers(ll_tokenizer, hf_tokenizer):
    from corral.grammars.param_error import ParamError
    from corral.grammars.params import StructuredOutputsParams

    check = GrammarCheck(ll_tokenizer, hf_tokenizer,
                         answer_grammar("auto", StructuredOutputsParams(json_object=True)))
    assert check.accepts('{"anything":[1,2]}') and check.accepts(TIME)
    assert not check.accepts("[1,2]") and not check.accepts("plain text")
    assert tool_call_constraint(TOOLS, "none", answer=StructuredOutputsParams(json=ANSWER)) \
        is None  # "none": the response format alone constrains the output
    with pytest.raises(ParamError) as e:
        answer_grammar("auto", StructuredOutputsParams(regex="a+"))
    assert e.value.param == "response_format"
