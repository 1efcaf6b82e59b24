"""Function calling: tools into the prompt, tool choice into a grammar, text into tool calls.

    prompt = render_chat_prompt(tokenizer, messages, tools)
    constraint = tool_call_constraint(tools, tool_choice, parallel_tool_calls)
    parser = ToolCallParser(tools)
    events = parser.feed(delta) ... + parser.finish()
    parser.content, parser.tool_calls
"""

from corral.tools.call_format import CALL_END, CALL_START, format_call
from corral.tools.constraint import MAX_PARALLEL_CALLS, tool_call_constraint
from corral.tools.events import ContentDelta, ToolCall, ToolCallDelta
from corral.tools.functions import FunctionSpec, ToolChoice, parse_tool_choice, parse_tools
from corral.tools.parser import ToolCallParser
from corral.tools.prompt import TOOL_PROMPT_FORMAT, render_chat_prompt

__all__ = [
    "CALL_END",
    "CALL_START",
    "MAX_PARALLEL_CALLS",
    "TOOL_PROMPT_FORMAT",
    "ContentDelta",
    "FunctionSpec",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "ToolChoice",
    "format_call",
    "parse_tool_choice",
    "parse_tools",
    "render_chat_prompt",
    "tool_call_constraint",
]
