"""What the routes of one app share: the engine, the embedder, names, metrics, settings."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.grammars.param_error import ParamError

from .admission import Admission
from .embeddings import Embedder
from .errors import APIError, not_found_model
from .logprobs import TokenTexts
from .metrics import ServerMetrics
from .responses_store import ResponseStore, default_responses_db

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass
class ServerSettings:
    """Settings of the HTTP layer (the engine has its own `EngineConfig`).

    `api_key` None means no authentication; `served_model_name` None means the engine's
    model name; `max_body_bytes` bounds every request body (413 above it);
    `tool_call_format` names the model family's tool-call format ("auto": detected from the
    chat template and special tokens); `responses_db` is the SQLite file that keeps the
    Responses API's stored responses (None: under the cache folder; ":memory:" allowed).
    `max_waiting` bounds the requests waiting for the engine (429 above; None: no bound),
    `request_timeout` the seconds a request may take (504 after; None: no limit), and
    `shutdown_timeout` the seconds a stopping server gives requests in flight to finish.
    """

    api_key: str | None = None
    served_model_name: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    tool_call_format: str = "auto"
    responses_db: str | None = None
    max_waiting: int | None = None
    request_timeout: float | None = None
    shutdown_timeout: float = 30.0

    def __post_init__(self) -> None:
        from corral.tools import TOOL_CALL_FORMATS

        if self.tool_call_format not in TOOL_CALL_FORMATS:
            raise ParamError("tool_call_format", f"must be one of {', '.join(TOOL_CALL_FORMATS)} "
                                                 f"(got {self.tool_call_format!r})")
        if self.max_body_bytes < 1:
            raise ParamError("max_body_bytes", f"must be positive (got {self.max_body_bytes})")
        if self.max_waiting is not None and (not isinstance(self.max_waiting, int)
                                             or self.max_waiting < 0):
            raise ParamError("max_waiting", f"must be a non-negative integer "
                                            f"(got {self.max_waiting!r})")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ParamError("request_timeout", f"must be positive (got "
                                                f"{self.request_timeout!r})")
        if not self.shutdown_timeout >= 0:
            raise ParamError("shutdown_timeout", f"must be non-negative (got "
                                                 f"{self.shutdown_timeout!r})")
        if self.api_key is not None and not self.api_key:
            self.api_key = None


@dataclass
class ServerState:
    """Shared by every route of one app."""

    engine: Any
    settings: ServerSettings
    embedder: Embedder | None = None
    metrics: ServerMetrics = field(init=False)
    admission: Admission = field(init=False)
    token_texts: TokenTexts = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))
    _responses: ResponseStore | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.engine, self.model_name)
        self.admission = Admission(self.settings.max_waiting, self.settings.request_timeout)
        self.token_texts = TokenTexts(self.engine.tokenizer)

    @property
    def responses(self) -> ResponseStore:
        """The Responses API's store, opened on first use."""
        if self._responses is None:
            path = self.settings.responses_db or default_responses_db()
            self._responses = ResponseStore(path)
        return self._responses

    @property
    def model_name(self) -> str:
        """`--served-model-name`, else the engine's model name (a folder's own name)."""
        if self.settings.served_model_name:
            return self.settings.served_model_name
        name = str(self.engine.model_name)
        return Path(name).name if os.sep in name else name

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def tool_format(self) -> Any:
        """The model family's `ToolFormat` (`--tool-call-format`, else detected)."""
        from corral.tools import tool_format

        return tool_format(self.tokenizer, self.settings.tool_call_format)

    @property
    def max_model_len(self) -> int:
        return int(self.engine.max_model_len)

    def check_chat_model(self, requested: str | None) -> str:
        """The served model's name; 404 for any other name (empty means the served one)."""
        if not requested or requested in (self.model_name, self.engine.model_name):
            return self.model_name
        if self.embedder is not None and requested == self.embedder.model_name:
            raise APIError(f"model: '{requested}' is an embedding model; it cannot generate "
                           "text", status=400, param="model", code="model_not_supported")
        raise not_found_model(requested)

    def check_embedding_model(self, requested: str | None) -> Embedder:
        if self.embedder is None:
            raise APIError("embeddings are not enabled on this server (start it with "
                           "--embedding-model)", status=404, param="model",
                           code="model_not_found")
        if requested and requested != self.embedder.model_name:
            if requested in (self.model_name, self.engine.model_name):
                raise APIError(f"model: '{requested}' is a chat model; use "
                               f"'{self.embedder.model_name}' for embeddings",
                               status=400, param="model", code="model_not_supported")
            raise not_found_model(requested)
        return self.embedder

    def check_prompt_length(self, num_prompt_tokens: int, max_tokens: int | None,
                            param: str = "messages") -> int:
        """The `max_tokens` to use; 400 when the prompt leaves no room to generate."""
        limit = self.max_model_len
        if num_prompt_tokens >= limit:
            asked = max_tokens or 1
            raise APIError(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {num_prompt_tokens + asked} tokens ({num_prompt_tokens} in the "
                f"messages, {asked} in the completion). Please reduce the length of the "
                "messages or completion.",
                param=param, code="context_length_exceeded",
            )
        room = limit - num_prompt_tokens
        return room if max_tokens is None else min(max_tokens, room)


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"
