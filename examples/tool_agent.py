"""A tool-calling agent loop: the model asks for a function, we run it, feed the result back.

The functions are real Python. Tool calls are constrained by a grammar built from the tools'
JSON Schemas, so `arguments` always parses and validates; the loop stops when the model
answers in text (or after a few rounds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from _client import client, model_name


def calculate(expression: str) -> dict[str, Any]:
    """Evaluate an arithmetic expression (numbers, + - * / ** and math functions)."""
    allowed = {k: getattr(math, k) for k in ("sqrt", "sin", "cos", "tan", "log", "exp", "pi")}
    if any(c in expression for c in "_[]{};:'\"\\"):
        return {"error": "unsupported characters"}
    try:
        return {"result": eval(expression, {"__builtins__": {}}, allowed)}  # noqa: S307
    except Exception as e:  # noqa: BLE001 - the model gets the error back
        return {"error": str(e)}


def word_length(word: str) -> dict[str, Any]:
    """Count the letters of a word."""
    return {"word": word, "letters": len(word)}


FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "calculate": calculate,
    "word_length": word_length,
}
TOOLS = [
    {"type": "function", "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression such as '12 * (3 + 4)'",
        "parameters": {"type": "object",
                       "properties": {"expression": {"type": "string", "maxLength": 40,
                                                     "pattern": "^[0-9+*/(). -]+$"}},
                       "required": ["expression"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "word_length",
        "description": "Count the letters in a word",
        "parameters": {"type": "object",
                       "properties": {"word": {"type": "string", "maxLength": 30}},
                       "required": ["word"], "additionalProperties": False}}},
]


def run_agent(question: str, max_rounds: int = 4) -> str:
    c = client()
    model = model_name(c)
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for round_number in range(max_rounds):
        # First round: a call is required; later rounds: the model decides.
        tool_choice = "required" if round_number == 0 else "auto"
        response = c.chat.completions.create(model=model, messages=messages, tools=TOOLS,
                                             tool_choice=tool_choice,
                                             parallel_tool_calls=False,
                                             max_tokens=120, temperature=0)
        message = response.choices[0].message
        if response.choices[0].finish_reason == "length":
            break  # cut by max_tokens: a call may be partial
        if not message.tool_calls:
            return message.content or ""
        messages.append({"role": "assistant", "content": message.content,
                         "tool_calls": [tc.model_dump() for tc in message.tool_calls]})
        for tc in message.tool_calls:
            arguments = json.loads(tc.function.arguments)
            result = FUNCTIONS[tc.function.name](**arguments)
            print(f"-> {tc.function.name}({arguments}) = {result}")
            messages.append({"role": "tool", "tool_call_id": tc.id,
                             "content": json.dumps(result)})
    final = c.chat.completions.create(model=model, messages=messages, tools=TOOLS,
                                      tool_choice="none", max_tokens=120, temperature=0)
    return final.choices[0].message.content or ""


if __name__ == "__main__":
    print(run_agent("What is 37 * 91 + 5? Use the calculator."))
