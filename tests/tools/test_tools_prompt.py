"""render_chat_prompt on SmolLM2's template (no tool support) and on a template that takes tools."""

from __future__ import annotations

import copy
import json

import pytest

from corral.tools import ToolCallParser, render_chat_prompt
from corral.tools.prompt import template_takes_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "UTC time."}}

AGENT_HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris "},
                                 {"type": "text", "text": "and the time?"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]},
    {"role": "tool", "tool_call_id": "call_a", "content": '{"temp_c": 21}'},
    {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
]

TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTOOLS:{% for t in tools %}{{ t.function.name }};"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }} "
    "{{ c.function.arguments | tojson }};{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_tools_go_into_the_system_message(hf_tokenizer):
    prompt = render_chat_prompt(hf_tokenizer, AGENT_HISTORY[:2], [WEATHER, TIME])
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are terse.\n\n# Tools")
    lines = system.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line) for line in lines] == [
        WEATHER, {"type": "function", "function": {
            "name": "get_time", "description": "UTC time.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}]
    assert "<tool_call>" in system and "</tool_call>" in system
    assert "Weather in Paris and the time?" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_without_system_message_the_tool_prompt_is_the_system_message(hf_tokenizer):
    prompt = render_chat_prompt(hf_tokenizer, [{"role": "user", "content": "hi"}], [WEATHER])
    assert prompt.startswith("<|im_start|>system\n# Tools")
    assert "SmolLM" not in prompt


def test_without_tools_the_template_renders_as_usual(hf_tokenizer):
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    expected = hf_tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        tokenize=False, add_generation_prompt=True)
    assert render_chat_prompt(hf_tokenizer, messages) == expected
    assert render_chat_prompt(hf_tokenizer, messages, [WEATHER], tool_choice="none") == expected
    no_gen = render_chat_prompt(hf_tokenizer, messages, add_generation_prompt=False)
    assert not no_gen.endswith("<|im_start|>assistant\n")


def test_tool_calls_and_results_in_history_are_rendered_as_text(hf_tokenizer):
    prompt = render_chat_prompt(hf_tokenizer, AGENT_HISTORY, [WEATHER, TIME])
    turns = prompt.split("<|im_start|>")[1:]
    assert [t.split("\n", 1)[0] for t in turns] == [
        "system", "user", "assistant", "user", "assistant"]
    assistant = turns[2].split("\n", 1)[1].removesuffix("<|im_end|>\n")
    # The history's calls are written in the very format the parser reads back.
    parser = ToolCallParser([WEATHER, TIME])
    parser.feed(assistant)
    parser.finish()
    assert parser.content is None
    assert [(c.name, json.loads(c.arguments)) for c in parser.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    # Both results in one user turn, in order.
    results = turns[3].split("\n", 1)[1]
    assert results == ('<tool_response>\n{"temp_c": 21}\n</tool_response>\n'
                       "<tool_response>\n12:00\n</tool_response><|im_end|>\n")


def test_history_renders_without_tools_in_the_request(hf_tokenizer):
    prompt = render_chat_prompt(hf_tokenizer, AGENT_HISTORY)
    assert "<tools>" not in prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt


@pytest.fixture(scope="module")
def tool_tokenizer(hf_tokenizer):
    tokenizer = copy.deepcopy(hf_tokenizer)
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def test_template_detection(hf_tokenizer, tool_tokenizer):
    assert not template_takes_tools(hf_tokenizer)
    assert template_takes_tools(tool_tokenizer)


def test_a_template_that_takes_tools_renders_them_itself(tool_tokenizer):
    prompt = render_chat_prompt(tool_tokenizer, AGENT_HISTORY, [WEATHER, TIME])
    assert prompt.startswith("<|im_start|>system\nTOOLS:get_weather;get_time;<|im_end|>")
    assert "# Tools" not in prompt and "<tool_call>" not in prompt
    # Hugging Face's convention: arguments reach the template as objects, not JSON text.
    assert 'CALL get_weather {"city": "Paris"};CALL get_time {};' in prompt
    assert "<|im_start|>tool\n12:00<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    none = render_chat_prompt(tool_tokenizer, AGENT_HISTORY, [WEATHER], tool_choice="none")
    assert "TOOLS:" not in none
