"""`POST /v1/responses`: the request, and its translation into a chat completion request.

Fields follow OpenAI's Responses API. A request becomes a `ChatCompletionRequest`
(`to_chat`), so tools, `text.format` and reasoning run on the very machinery chat
completions use; `RESPONSES_RENAMES` names a refused chat field in this API's terms.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .errors import APIError
from .protocol import OpenAIModel
from .responses_items import items_to_messages
from .turn import Renames

_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"

RESPONSES_RENAMES: Renames = (
    (r"^messages.*", "input"),
    (r"^tools\[(\d+)\]\.function\.", r"tools.\1."),
    (r"^tools\.(\d+)\.function\.", r"tools.\1."),
    (r"^response_format\.json_schema\.", "text.format."),
    (r"^response_format\.json_schema$", "text.format"),
    (r"^response_format", "text.format"),
    (r"^max_completion_tokens$", "max_output_tokens"),
    (r"^max_tokens$", "max_output_tokens"),
    (r"^tool_choice\.function\.name$", "tool_choice.name"),
    (r"^reasoning_effort$", "reasoning.effort"),
)


class ResponsesTool(OpenAIModel):
    """A function tool, in the Responses API's flat shape."""

    type: str
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(OpenAIModel):
    type: Literal["function"]
    name: str


class TextFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(OpenAIModel):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(OpenAIModel):
    effort: Literal["low", "medium", "high"] | None = None
    summary: str | None = None


class ResponsesRequest(OpenAIModel):
    background: bool | None = None
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    reasoning: ReasoningConfig | None = None
    store: bool | None = True
    stream: bool | None = False
    temperature: float | None = None
    text: TextConfig | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    tools: list[ResponsesTool] | None = None
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None

    def check(self) -> None:
        """Refuse what Corral cannot do, naming the field."""
        if self.background:
            raise APIError("background: background responses are not supported",
                           param="background")
        for i, tool in enumerate(self.tools or []):
            if tool.type != "function":
                raise APIError(f"tools.{i}.type: only function tools are supported (got "
                               f"{tool.type!r})", param=f"tools.{i}.type")
            if not tool.name:
                raise APIError(f"tools.{i}.name: required", param=f"tools.{i}.name")
        fmt = self.text.format if self.text else None
        if fmt is not None and fmt.type == "json_schema":
            if fmt.name is None:
                raise APIError("text.format.name: required for json_schema",
                               param="text.format.name")
            if fmt.schema_ is None:
                raise APIError("text.format.schema: required for json_schema",
                               param="text.format.schema")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise APIError("max_output_tokens: must be a positive integer",
                           param="max_output_tokens")
        if isinstance(self.tool_choice, NamedFunctionChoice):
            names = [t.name for t in self.tools or []]
            if self.tool_choice.name not in names:
                raise APIError(f"tool_choice.name: {self.tool_choice.name!r} is not among the "
                               f"tools {names}", param="tool_choice.name")

    def chat_body(self, history: list[dict[str, Any]], items: list[dict[str, Any]]
                  ) -> dict[str, Any]:
        """The chat completion request (as JSON) for `history` (earlier items) + `items`."""
        items_to_messages(items)  # refusals name this request's own items
        messages = items_to_messages(history + items)
        if self.instructions:
            messages.insert(0, {"role": "system", "content": self.instructions})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "parallel_tool_calls": self.parallel_tool_calls,
            "stream": self.stream,
        }
        if self.tools:
            body["tools"] = [{"type": "function", "function": _function(t)} for t in self.tools]
        if isinstance(self.tool_choice, NamedFunctionChoice):
            body["tool_choice"] = {"type": "function",
                                   "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        fmt = self.text.format if self.text else None
        if fmt is not None and fmt.type == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt.name, "description": fmt.description, "schema": fmt.schema_,
                "strict": fmt.strict}}
        elif fmt is not None:
            body["response_format"] = {"type": fmt.type}
        if self.reasoning is not None and self.reasoning.effort is not None:
            body["reasoning_effort"] = self.reasoning.effort
        return {k: v for k, v in body.items() if v is not None}

    def echo(self) -> dict[str, Any]:
        """The request's settings as a response object repeats them."""
        fmt = self.text.format if self.text and self.text.format else None
        text_format: dict[str, Any] = {"type": "text"}
        if fmt is not None:
            text_format = fmt.model_dump(by_alias=True, exclude_none=True)
        tool_choice: Any = self.tool_choice or "auto"
        if isinstance(tool_choice, NamedFunctionChoice):
            tool_choice = tool_choice.model_dump()
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {},
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": self.reasoning.effort if self.reasoning else None,
                          "summary": None},
            "store": self.store is not False,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "text": {"format": text_format},
            "tool_choice": tool_choice,
            "tools": [t.model_dump() for t in self.tools or []],
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "truncation": self.truncation or "disabled",
            "user": self.user,
        }


def _function(tool: ResponsesTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return function
