"""The embedded model, run by Corral's engine under the tool grammar: the calls it makes parse,
name a real tool and carry schema-valid arguments, and the grammar ends the output."""

from __future__ import annotations

import json

import jsonschema
import pytest

from corral.engine import SamplingParams
from corral.tools import ToolCallParser, tool_call_constraint

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Get the current time in a timezone.",
        "parameters": {"type": "object", "properties": {
            "timezone": {"type": "string", "maxLength": 40}},
            "required": ["timezone"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MESSAGES = [{"role": "user",
             "content": "What is the weather like in Paris and what time is it in Tokyo?"}]


def token_pieces(tokenizer, token_ids: list[int]) -> list[str]:
    """The text deltas a stream would carry, one per token."""
    texts = [tokenizer.decode(token_ids[:i], skip_special_tokens=True)
             for i in range(len(token_ids) + 1)]
    return [b[len(a):] for a, b in zip(texts, texts[1:], strict=False)]


@pytest.mark.slow
def test_model_calls_are_valid_under_the_grammar(llm):
    # "required" without parallel calls: the model picks the function, makes exactly one call.
    # (Named choices and parallel calls are covered token by token in test_tools_grammar.)
    spec = tool_call_constraint(TOOLS, "required", parallel_tool_calls=False)
    params = SamplingParams(temperature=0, max_tokens=96, structured_outputs=spec)
    [output] = llm.chat(MESSAGES, params, tools=TOOLS)
    completion = output.outputs[0]
    assert completion.finish_reason == "stop", completion.text  # the grammar ended it

    parser = ToolCallParser(TOOLS)
    for piece in token_pieces(llm.tokenizer, list(completion.token_ids)):
        parser.feed(piece)
    parser.finish()
    assert parser.content is None
    [call] = parser.tool_calls
    assert call.name in SCHEMAS
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
