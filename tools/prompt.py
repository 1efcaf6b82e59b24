"""Chat messages and tools -> the prompt text, through the model's chat template.

When the template takes `tools` itself (Qwen2, Llama 3.1 and others), tools and tool-call
history go to it in Hugging Face's format. Otherwise (SmolLM2's template, for one) Corral
writes the tools into the system message with its built-in tool prompt, and renders tool
calls and tool results in the history as text in the same call format, so a template that
knows nothing of tools still carries a multi-turn agent loop.
"""

from __future__ import annotations

import json
from typing import Any

from corral.grammars.param_error import ParamError
from corral.tools.call_format import RESPONSE_END, RESPONSE_START, format_calls
from corral.tools.functions import FunctionSpec, parse_tool_choice, parse_tools
from corral.tools.messages import normalize_messages

TOOL_PROMPT_FORMAT = """\
# Tools

You can call functions to help with the user's request. The functions are listed inside \
<tools></tools>, one JSON object per line, each with its name, description and the JSON \
Schema of its arguments:
<tools>
{tools}
</tools>

To call a function, answer with a block like this one, and nothing around it:
<tool_call>
{{"name": "<function name>", "arguments": <the arguments, a JSON object>}}
</tool_call>
To call several functions at once, write one block per call, each on its own lines. \
Results come back inside <tool_response></tool_response>. When no function fits, answer \
in plain text."""
"""The built-in tool prompt (for templates that do not take `tools`).

It is appended to the system message (or is the system message when there is none), with
`{tools}` replaced by one line per function: `{"type": "function", "function": {"name",
"description", "parameters"}}` as compact JSON. In the history, an assistant message's
tool calls become its text (after any content), one block per call:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and consecutive tool messages become one user message, one block per result, in order:

    <tool_response>
    {"temperature": 21}
    </tool_response>
"""


def render_chat_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    *,
    tool_choice: Any = None,
    fmt: Any = None,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The prompt text for OpenAI-format `messages` and `tools`, in the tool-call format
    `fmt` (a `ToolFormat`; by default the one detected from the tokenizer).

    `tool_choice="none"` leaves the tools out of the prompt (they are not callable); the
    history's tool calls and results are rendered all the same. `template_kwargs` reach the
    chat template as variables (e.g. `enable_thinking`). A template that refuses the
    conversation raises a ValueError naming `messages` and quoting the template.
    """
    from corral.tools.formats import detect_format

    specs = parse_tools(tools)
    if parse_tool_choice(tool_choice, specs).mode == "none":
        specs = []
    chat = normalize_messages(messages)
    fmt = fmt if fmt is not None else detect_format(tokenizer)
    return fmt.render_prompt(tokenizer, chat, specs, add_generation_prompt=add_generation_prompt,
                             template_kwargs=template_kwargs)


def render_hermes_prompt(tokenizer: Any, chat: list[dict[str, Any]], specs: list[FunctionSpec],
                         add_generation_prompt: bool = True,
                         template_kwargs: dict[str, Any] | None = None) -> str:
    """Validated messages in the Hermes format: through a template that takes tools, or
    with Corral's built-in tool prompt (see the module docstring)."""
    if template_takes_tools(tokenizer):
        return apply_template(tokenizer, native_messages(chat),
                              [s.to_openai() for s in specs] or None, add_generation_prompt,
                              template_kwargs)
    return apply_template(tokenizer, _text_messages(chat, specs), None, add_generation_prompt,
                          template_kwargs)


# Arguments of `apply_chat_template` itself: never template variables from a request.
_RESERVED_KWARGS = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length",
    "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"})


def apply_template(tokenizer: Any, messages: list[dict[str, Any]],
                   tools: list[dict[str, Any]] | None, add_generation_prompt: bool,
                   template_kwargs: dict[str, Any] | None = None) -> str:
    """The tokenizer's chat template rendered as text; its own errors (`raise_exception`,
    undefined fields) become a ValueError naming `messages`."""
    import jinja2

    kwargs = dict(template_kwargs or {})
    for key in kwargs:
        if key in _RESERVED_KWARGS:
            raise ParamError(f"chat_template_kwargs.{key}", "is set by Corral itself")
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt,
                                             **kwargs)
    except jinja2.TemplateError as e:
        raise ParamError("messages", f"the chat template refused the messages: {e}") from None


def tool_system_prompt(specs: list[FunctionSpec]) -> str:
    """The built-in tool prompt listing `specs`."""
    lines = "\n".join(json.dumps(s.to_openai(), ensure_ascii=False) for s in specs)
    return TOOL_PROMPT_FORMAT.format(tools=lines)


_PROBE_TOOL = {"type": "function", "function": {
    "name": "corral_probe_fn", "description": "probe", "parameters": {"type": "object"}}}
_probe_cache: dict[tuple[int, str], bool] = {}


def template_takes_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a `tools` argument."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return False
    key = (id(tokenizer), template)
    if key not in _probe_cache:
        probe = [{"role": "user", "content": "hi"}]
        try:
            with_tools = tokenizer.apply_chat_template(probe, tools=[_PROBE_TOOL], tokenize=False)
            without = tokenizer.apply_chat_template(probe, tokenize=False)
            _probe_cache[key] = with_tools != without and "corral_probe_fn" in with_tools
        except Exception:  # a template that fails on the probe cannot take tools either
            _probe_cache[key] = False
    return _probe_cache[key]


def native_messages(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages in Hugging Face's tool-use format (arguments as objects)."""
    result = []
    for message in chat:
        message = dict(message)
        if "tool_calls" in message:
            message["tool_calls"] = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": arguments_value(c["arguments"])}}
                for c in message["tool_calls"]
            ]
        result.append(message)
    return result


def _text_messages(chat: list[dict[str, Any]], specs: list[FunctionSpec]) -> list[dict[str, Any]]:
    """Messages with tools, tool calls and tool results written as text."""
    result: list[dict[str, Any]] = []
    for message in chat:
        role, content = message["role"], message["content"]
        if role == "tool":
            block = f"{RESPONSE_START}\n{content}\n{RESPONSE_END}"
            if result and result[-1].get("_is_tool_results"):
                result[-1]["content"] += "\n" + block
            else:
                result.append({"role": "user", "content": block, "_is_tool_results": True})
            continue
        if message.get("tool_calls"):
            calls = format_calls([(c["name"], c["arguments"]) for c in message["tool_calls"]])
            content = f"{content}\n{calls}" if content else calls
        result.append({"role": role, "content": content})
    if specs:
        tool_prompt = tool_system_prompt(specs)
        if result and result[0]["role"] == "system":
            head = result[0]["content"]
            result[0]["content"] = f"{head}\n\n{tool_prompt}" if head else tool_prompt
        else:
            result.insert(0, {"role": "system", "content": tool_prompt})
    return [{"role": m["role"], "content": m["content"]} for m in result]


def arguments_value(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return arguments
