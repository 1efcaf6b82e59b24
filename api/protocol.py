"""Protocol models shared by the routes: usage, models list, embeddings, grammars, extensions.

Field names and order mirror OpenAI's. Request models ignore unknown fields (as OpenAI
does), except the embeddings request, whose schema forbids extras.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.engine.sampling_params import StructuredOutputsParams

from .errors import APIError


class OpenAIModel(BaseModel):
    """Base of request models: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class StructuredOutputs(OpenAIModel):
    """Corral extension: one constraint on the output (exactly one field set)."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    grammar_name: str | None = None
    json_object: bool | None = None
    backend: str | None = None

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def to_params(self) -> StructuredOutputsParams:
        try:
            return StructuredOutputsParams(
                json=self.json_,
                json_object=bool(self.json_object),
                regex=self.regex,
                choice=self.choice,
                grammar=self.grammar,
                grammar_name=self.grammar_name,
                backend=self.backend,
            )
        except ValueError as e:
            raise APIError.from_value_error(e, param="structured_outputs") from None


# vLLM's older constraint fields -> the `structured_outputs` field each one stands for.
GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar"}


class GenerationRequest(OpenAIModel):
    """Base of the generation requests: vLLM's `guided_*` fields are honoured as the
    `structured_outputs` they stand for (never silently dropped)."""

    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @model_validator(mode="after")
    def _fold_guided_fields(self) -> GenerationRequest:
        given = [name for name in GUIDED_FIELDS if getattr(self, name) is not None]
        if not given:
            return self
        if len(given) > 1:
            raise APIError(f"{given[1]}: only one of {', '.join(GUIDED_FIELDS)} may be set",
                           param=given[1])
        name = given[0]
        if getattr(self, "structured_outputs", None) is not None:
            raise APIError(f"{name}: cannot be combined with structured_outputs", param=name)
        self.structured_outputs = StructuredOutputs.model_validate(
            {GUIDED_FIELDS[name]: getattr(self, name)})
        return self


class TokenizeRequest(OpenAIModel):
    """`POST /tokenize`: a prompt, or chat messages rendered by the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(OpenAIModel):
    """`POST /detokenize`: token ids back to text."""

    model: str | None = None
    tokens: list[int]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "corral"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`; extra fields are refused, as in OpenAI's schema."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class GrammarRequest(OpenAIModel):
    """Corral extension: `POST /v1/grammars` registers a named grammar."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    syntax: Literal["lark", "regex", "json_schema"] = "lark"
    definition: str | dict[str, Any]


class GrammarCard(BaseModel):
    object: Literal["grammar"] = "grammar"
    name: str
    syntax: str | None = None
    info: dict[str, Any] = Field(default_factory=dict)


class GrammarList(BaseModel):
    object: Literal["list"] = "list"
    data: list[GrammarCard]
