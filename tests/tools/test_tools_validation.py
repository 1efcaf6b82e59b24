"""Bad tools, tool_choice and messages are refused with a ValueError naming the field."""

from __future__ import annotations

import pytest

from corral.tools import ToolCallParser, render_chat_prompt, tool_call_constraint

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


@pytest.mark.parametrize(
    ("tools", "tool_choice", "field"),
    [
        ([{"type": "function", "function": {"description": "no name"}}], "auto",
         "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "has space"}}], "auto",
         "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
         "auto", "tools[0].function.parameters"),
        ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], "auto",
         "tools[0].function.parameters"),
        ([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "strnig"}}}}}], "auto",
         "tools[0].function.parameters"),
        ([{"type": "custom", "custom": {"name": "f"}}], "auto", "tools[0].type"),
        ([WEATHER, WEATHER], "auto", "tools[1].function.name"),
        ([WEATHER], "sometimes", "tool_choice"),
        ([WEATHER], {"type": "function", "function": {"name": "get_time"}},
         "tool_choice.function.name"),
        ([WEATHER], {"type": "function"}, "tool_choice.function.name"),
        ([WEATHER], {"type": "allowed_tools"}, "tool_choice.type"),
        ([], "required", "tool_choice"),
        ("get_weather", "auto", "tools"),
    ],
)
def test_bad_tools_or_choice_name_the_field(tools, tool_choice, field):
    with pytest.raises(ValueError) as info:
        tool_call_constraint(tools, tool_choice)
    assert str(info.value).startswith(field), str(info.value)


def test_parallel_tool_calls_must_be_a_boolean():
    with pytest.raises(ValueError, match="^parallel_tool_calls:"):
        tool_call_constraint([WEATHER], "auto", parallel_tool_calls="yes")


def test_unenforceable_schema_keyword_is_refused_naming_the_tool():
    # A keyword llguidance cannot enforce must fail closed, not be ignored.
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}},
        "dependentSchemas": {"a": {"required": ["b"]}}}}}
    with pytest.raises(ValueError, match=r"^tools\[0\]\.function\.parameters:"):
        tool_call_constraint([tool], "required")


def test_none_and_no_tools_give_no_constraint():
    assert tool_call_constraint([WEATHER], "none") is None
    assert tool_call_constraint(None, None) is None
    assert tool_call_constraint([], "auto") is None


def test_constraint_is_an_llguidance_grammar():
    spec = tool_call_constraint([WEATHER], None)
    assert spec.kind == "grammar"
    assert spec.backend == "llguidance"
    assert spec.grammar.startswith("%llguidance {}")


def test_parser_validates_its_tools():
    with pytest.raises(ValueError, match=r"^tools\[0\]\.function\.name:"):
        ToolCallParser([{"type": "function", "function": {}}])


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([], "messages"),
        ([{"role": "robot", "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
         "messages[0].content[0].type"),
        ([{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}],
         "messages[1].tool_call_id"),
        ([{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {}}]}],
         "messages[0].tool_calls[0].function.name"),
    ],
)
def test_bad_messages_name_the_field(hf_tokenizer, messages, field):
    with pytest.raises(ValueError) as info:
        render_chat_prompt(hf_tokenizer, messages, [WEATHER])
    assert str(info.value).startswith(field + ":"), str(info.value)
