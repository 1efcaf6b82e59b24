"""`POST /v1/chat/completions`: the request, its conversion to `SamplingParams`, responses.

Fields follow OpenAI's order; Corral's extensions sit in one marked block at the end of the
request. `ChatCompletionRequest.sampling_params()` is the one place a chat request becomes
engine parameters; every refusal there is an `APIError` naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from corral.engine.sampling_params import SamplingParams, StructuredOutputsParams

from .errors import APIError
from .protocol import GenerationRequest, OpenAIModel, StreamOptions, StructuredOutputs

_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class ContentPart(OpenAIModel):
    type: str
    text: str | None = None


class FunctionCall(OpenAIModel):
    name: str
    arguments: str


class ToolCall(OpenAIModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIModel):
    """One message of the conversation; which fields are needed depends on `role`."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # Corral extension: an assistant turn's reasoning, as Corral returned it.
    reasoning_content: str | None = None

    def text(self, where: str) -> str | None:
        """The content as one string (text parts joined); other part types are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content
        pieces = []
        for j, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise APIError(
                    f"{where}.content.{j}.type: only text content parts are supported "
                    f"(got {part.type!r})",
                    param=f"{where}.content.{j}.type",
                )
            pieces.append(part.text)
        return "".join(pieces)

    def to_dict(self, where: str) -> dict[str, Any]:
        """The message in OpenAI's dict form, as the chat template reads it."""
        content = self.text(where)
        if self.role == "tool" and not self.tool_call_id:
            raise APIError(f"{where}.tool_call_id: required for a tool message",
                           param=f"{where}.tool_call_id")
        if self.role == "assistant":
            if content is None and not self.tool_calls:
                raise APIError(f"{where}.content: an assistant message needs content or "
                               "tool_calls", param=f"{where}.content")
        elif content is None:
            raise APIError(f"{where}.content: required for a {self.role} message",
                           param=f"{where}.content")
        msg: dict[str, Any] = {"role": self.role, "content": content}
        if self.name is not None:
            msg["name"] = self.name
        if self.tool_calls:
            msg["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            msg["tool_call_id"] = self.tool_call_id
        if self.reasoning_content is not None and self.role == "assistant":
            msg["reasoning_content"] = self.reasoning_content
        return msg


class FunctionDefinition(OpenAIModel):
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(OpenAIModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(OpenAIModel):
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def to_params(self) -> StructuredOutputsParams | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return StructuredOutputsParams(json_object=True)
        if self.json_schema is None:
            raise APIError("response_format.json_schema: required when type is json_schema",
                           param="response_format.json_schema")
        schema = self.json_schema.schema_ if self.json_schema.schema_ is not None else {}
        return StructuredOutputsParams(json=schema)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    presence_penalty: float | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None

    # --- Corral extensions (not in OpenAI's API) ---
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    structured_outputs: StructuredOutputs | None = None
    fast_forward: bool | None = None
    # False: this request makes no speculative drafts (n-gram lookup).
    speculative: bool | None = None
    # False: a constrained output is cut at max_tokens instead of closed validly before it.
    close_structures: bool | None = None
    # False: tool calls are parsed but not enforced by a grammar (for comparisons only).
    constrain_tool_calls: bool | None = None
    # Variables for the chat template (e.g. {"enable_thinking": false} for Qwen3).
    chat_template_kwargs: dict[str, Any] | None = None
    # Reasoning ends after this many tokens (its end marker is forced), then the answer.
    max_reasoning_tokens: int | None = Field(default=None, ge=1)

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.to_dict(f"messages.{i}") for i, m in enumerate(self.messages)]

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        if not self.tools:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

    def template_kwargs(self) -> dict[str, Any]:
        """Variables for the chat template: `chat_template_kwargs` and `reasoning_effort`."""
        kwargs = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort is not None:
            kwargs["reasoning_effort"] = self.reasoning_effort
        return kwargs

    def uses_tools(self) -> bool:
        """Whether the output may hold tool calls (tools given and tool_choice not none)."""
        return bool(self.tools) and self.tool_choice != "none"

    def tool_choice_value(self) -> str | dict[str, Any]:
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.model_dump()
        return self.tool_choice

    def check(self) -> None:
        """Cross-field rules OpenAI enforces."""
        if self.stream_options is not None and not self.stream:
            raise APIError("stream_options: only allowed when stream is true",
                           param="stream_options")
        if self.top_logprobs is not None:
            if not 0 <= self.top_logprobs <= 20:
                raise APIError("top_logprobs: must be in 0..20", param="top_logprobs")
            if not self.logprobs:
                raise APIError("top_logprobs: needs logprobs set to true", param="top_logprobs")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or []]
            if self.tool_choice.function.name not in names:
                raise APIError(
                    f"tool_choice: function {self.tool_choice.function.name!r} is not among "
                    f"the tools {names}", param="tool_choice")
        elif self.tool_choice == "required" and not self.tools:
            raise APIError("tool_choice: 'required' needs tools", param="tool_choice")
        if self.structured_outputs is not None and self.response_format is not None \
                and self.response_format.type != "text":
            raise APIError("structured_outputs: cannot be combined with response_format",
                           param="structured_outputs")

    def answer(self) -> tuple[StructuredOutputsParams | None, str]:
        """The constraint on the answer (besides tools) and the field it came from."""
        if self.structured_outputs is not None:
            if self.uses_tools():
                raise APIError("structured_outputs: cannot be combined with tool calls; use "
                               "response_format, or set tool_choice to 'none'",
                               param="structured_outputs")
            return self.structured_outputs.to_params(), "structured_outputs"
        return self.answer_format(), "response_format"

    def answer_format(self) -> StructuredOutputsParams | None:
        """The `response_format` constraint (None for text or when absent)."""
        if self.response_format is None or self.structured_outputs is not None:
            return None
        try:
            return self.response_format.to_params()
        except ValueError as e:
            raise APIError.from_value_error(e, param="response_format") from None

    def output_constraint(self, tool_spec: StructuredOutputsParams | None
                          ) -> StructuredOutputsParams | None:
        """The one constraint on the output: tools (which hold the `response_format` answer
        beside the calls), response_format or structured_outputs."""
        if self.structured_outputs is not None:
            if tool_spec is not None:
                raise APIError("structured_outputs: cannot be combined with tool calls; use "
                               "response_format, or set tool_choice to 'none'",
                               param="structured_outputs")
            return self.structured_outputs.to_params()
        return tool_spec if tool_spec is not None else self.answer_format()

    def sampling_params(self, max_tokens: int, constraint: StructuredOutputsParams | None,
                        *, skip_special_tokens: bool = True,
                        extra_stop_token_ids: list[int] | None = None) -> SamplingParams:
        """Engine parameters; `max_tokens` is already resolved against the context.
        `skip_special_tokens` False keeps a format's special-token markers in the text;
        `extra_stop_token_ids` are the format's own end-of-turn tokens."""
        values: dict[str, Any] = {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "seed": self.seed,
            "min_tokens": self.min_tokens,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
            "ignore_eos": self.ignore_eos,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "logit_bias": self.logit_bias,
            "fast_forward": self.fast_forward,
            "speculative": self.speculative,
            "close_structures": self.close_structures,
        }
        kwargs = {k: v for k, v in values.items() if v is not None}
        kwargs["max_tokens"] = max_tokens
        if self.logprobs:
            kwargs["logprobs"] = self.top_logprobs or 0
        kwargs["structured_outputs"] = constraint
        kwargs["skip_special_tokens"] = skip_special_tokens
        if extra_stop_token_ids:
            kwargs["stop_token_ids"] = [*(self.stop_token_ids or []), *extra_stop_token_ids]
        try:
            return SamplingParams(**kwargs)
        except ValueError as e:
            raise APIError.from_value_error(e) from None

    def requested_max_tokens(self) -> int | None:
        value = self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens
        if value is not None and value < 1:
            name = "max_completion_tokens" if self.max_completion_tokens is not None \
                else "max_tokens"
            raise APIError(f"{name}: must be a positive integer (got {value})", param=name)
        return value
