"""`POST /v1/completions` (legacy text completions): request, conversion, response."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from corral.engine.sampling_params import SamplingParams

from .chat_protocol import ResponseFormat
from .errors import APIError
from .protocol import GenerationRequest, StreamOptions, StructuredOutputs, UsageInfo


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    best_of: int | None = None
    echo: bool | None = False
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = None
    max_tokens: int | None = 16
    n: int | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None

    # --- Corral extensions (not in OpenAI's API) ---
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    structured_outputs: StructuredOutputs | None = None
    # As in chat completions: JSON mode or a JSON schema for the text.
    response_format: ResponseFormat | None = None
    fast_forward: bool | None = None
    # False: this request makes no speculative drafts (n-gram lookup).
    speculative: bool | None = None
    # False: a constrained output is cut at max_tokens instead of closed validly before it.
    close_structures: bool | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts as strings or token-id lists (a flat id list is one prompt)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise APIError("prompt: must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        for i, item in enumerate(p):
            if isinstance(item, list) and not item:
                raise APIError(f"prompt.{i}: a token-id list must not be empty",
                               param=f"prompt.{i}")
        return list(p)  # type: ignore[arg-type]

    def check(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise APIError("stream_options: only allowed when stream is true",
                           param="stream_options")
        if self.logprobs is not None and not 0 <= self.logprobs <= 5:
            raise APIError("logprobs: must be in 0..5", param="logprobs")
        if self.suffix:
            raise APIError("suffix: not supported by this server", param="suffix")
        if self.echo and self.logprobs is not None:
            raise APIError("echo: echo with logprobs (prompt log-probabilities) is not "
                           "supported", param="echo")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise APIError("best_of: only best_of equal to n is supported", param="best_of")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise APIError(f"max_tokens: must be a positive integer (got {self.max_tokens})",
                           param="max_tokens")
        if self.structured_outputs is not None and self.response_format is not None \
                and self.response_format.type != "text":
            raise APIError("structured_outputs: cannot be combined with response_format",
                           param="structured_outputs")

    def constraint_field(self) -> str:
        """The request field the output constraint comes from (for error messages)."""
        return "structured_outputs" if self.structured_outputs is not None else "response_format"

    def sampling_params(self, max_tokens: int) -> SamplingParams:
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
            "logprobs": self.logprobs,
            "fast_forward": self.fast_forward,
            "speculative": self.speculative,
            "close_structures": self.close_structures,
        }
        kwargs = {k: v for k, v in values.items() if v is not None}
        kwargs["max_tokens"] = max_tokens
        if self.structured_outputs is not None:
            kwargs["structured_outputs"] = self.structured_outputs.to_params()
        elif self.response_format is not None:
            try:
                kwargs["structured_outputs"] = self.response_format.to_params()
            except ValueError as e:
                raise APIError.from_value_error(e, param="response_format") from None
        try:
            return SamplingParams(**kwargs)
        except ValueError as e:
            raise APIError.from_value_error(e) from None


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None
