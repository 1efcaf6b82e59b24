"""The text format of a tool call, shared by the prompt, the grammar and the parser.

A call is one block, and parallel calls are several blocks joined by one newline:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

The JSON line is written the way `json.dumps` writes it by default (", " between items,
": " between key and value), and the grammar holds generated calls to that same layout
(`lark_text.JSON_LAYOUT`). This is the Hermes format (`formats/hermes.py`).
"""

from __future__ import annotations

import json
from typing import Any

CALL_START = "<tool_call>"
CALL_END = "</tool_call>"
CALL_SEPARATOR = "\n"
RESPONSE_START = "<tool_response>"
RESPONSE_END = "</tool_response>"


def call_prefix(name: str) -> str:
    """The fixed text of a call up to its arguments value."""
    return f'{CALL_START}\n{{"name": {json.dumps(name)}, "arguments": '


CALL_SUFFIX = f"}}\n{CALL_END}"


def format_call(name: str, arguments: Any) -> str:
    """One call block; `arguments` is a JSON string (as in OpenAI messages) or a value."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass
    return call_prefix(name) + json.dumps(arguments, ensure_ascii=False) + CALL_SUFFIX


def format_calls(calls: list[tuple[str, Any]]) -> str:
    """Several call blocks, as the model writes parallel calls."""
    return CALL_SEPARATOR.join(format_call(name, args) for name, args in calls)
