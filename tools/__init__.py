"""Function calling and reasoning: tools into the prompt, tool choice into a grammar, text
into reasoning, content and tool calls, each in the model family's own format.

    fmt = tool_format(tokenizer)                     # detected (or named) ToolFormat
    prompt = render_chat_prompt(tokenizer, messages, tools, fmt=fmt)
    constraint = chat_constraint(fmt, tools, tool_choice, parallel_tool_calls,
                                 reasoning_mode=fmt.reasoning_mode(prompt))
    parser = fmt.output_parser(tools, reasoning_mode=fmt.reasoning_mode(prompt))
    events = parser.feed(delta) ... + parser.finish()
    parser.reasoning, parser.content, parser.tool_calls
"""

from corral.tools.call_format import CALL_END, CALL_START, format_call
from corral.tools.constraint import MAX_PARALLEL_CALLS, chat_constraint, tool_call_constraint
from corral.tools.events import ContentDelta, ReasoningDelta, ToolCall, ToolCallDelta
from corral.tools.formats import TOOL_CALL_FORMATS, ToolFormat, tool_format
from corral.tools.functions import FunctionSpec, ToolChoice, parse_tool_choice, parse_tools
from corral.tools.parser import ToolCallParser
from corral.tools.prompt import TOOL_PROMPT_FORMAT, render_chat_prompt

__all__ = [
    "CALL_END",
    "CALL_START",
    "MAX_PARALLEL_CALLS",
    "TOOL_PROMPT_FORMAT",
    "TOOL_CALL_FORMATS",
    "ContentDelta",
    "FunctionSpec",
    "ReasoningDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "ToolChoice",
    "ToolFormat",
    "chat_constraint",
    "format_call",
    "parse_tool_choice",
    "parse_tools",
    "render_chat_prompt",
    "tool_call_constraint",
    "tool_format",
]
