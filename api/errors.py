"""One error type and one handler: every failure leaves the server as an OpenAI error object.

The body is `{"error": {"message", "type", "param", "code"}}`, except on the Anthropic
Messages routes (`/v1/messages...`), where it is Anthropic's
`{"type": "error", "error": {"type", "message"}}`; stack traces never reach a client.
Pydantic validation errors become 400 (never FastAPI's 422) with `param` set to the field
path, e.g. `messages.0.content`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.engine.engine_errors import EngineDeadError
from corral.grammars.param_error import ParamError

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error a client gets back as `{"error": {...}}` with an HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_anthropic_dict(self) -> dict[str, Any]:
        """The error in Anthropic's shape (its `type` chosen by the HTTP status)."""
        kind = ANTHROPIC_ERROR_TYPES.get(self.status)
        if kind is None:
            kind = "api_error" if self.status >= 500 else "invalid_request_error"
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def response(self, path: str | None = None) -> JSONResponse:
        """The error as an HTTP response; on an Anthropic route (`path`) in its shape."""
        headers = dict(self.headers or {})
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        body = self.to_anthropic_dict() if is_anthropic_path(path) else self.to_dict()
        return JSONResponse(body, status_code=self.status, headers=headers or None)

    @classmethod
    def from_value_error(cls, err: BaseException, param: str | None = None) -> APIError:
        """A 400 from a `ValueError`; `param` is the given one, else the field a
        `ParamError` names."""
        message = str(err) or type(err).__name__
        if param is None and isinstance(err, ParamError):
            param = err.param
        return cls(message, status=400, param=param)


# Anthropic's error `type` for each HTTP status.
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                         403: "permission_error", 404: "not_found_error",
                         413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                         504: "timeout_error",
                         503: "overloaded_error", 529: "overloaded_error"}


def is_anthropic_path(path: str | None) -> bool:
    """Whether `path` is a route of the Anthropic Messages API (errors in its shape)."""
    return path is not None and (path == "/v1/messages" or path.startswith("/v1/messages/"))


def not_found_model(model: str) -> APIError:
    return APIError(
        f"The model '{model}' does not exist",
        status=404,
        param="model",
        code="model_not_found",
    )


def server_error(message: str = "internal server error") -> APIError:
    return APIError(message, status=500, type="server_error")


def engine_dead(exc: EngineDeadError) -> APIError:
    """A 503: the engine can serve nothing now (its core process died or stopped)."""
    return APIError(str(exc), status=503, type="server_error", code="engine_dead")


def validation_error(exc: RequestValidationError) -> APIError:
    """The first pydantic error as a 400 naming the field path."""
    errors = exc.errors()
    if not errors:
        return APIError("invalid request body")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # Union members add their type name to the path (e.g. "str", "list[...]"): drop them.
    loc = [part for part in loc if not _is_type_tag(part)]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return APIError(f"request body is not valid JSON: {msg}", param=None)
    if first.get("type") == "missing":
        return APIError(f"{param}: field required", param=param)
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return APIError(f"{param or 'body'}: {msg}{more}", param=param)


def _is_type_tag(part: str) -> bool:
    return (
        part in ("str", "int", "float", "bool", "dict", "list", "none")
        or part.startswith(("list[", "dict[", "function-", "literal[", "tagged-union["))
        or (part[:1].isupper() and not part.isupper())
    )


def install_error_handlers(app: FastAPI,
                           on_error: Callable[[int], None] | None = None) -> None:
    """Route every exception through `APIError`; `on_error(status)` counts them."""

    def respond(request: Request, err: APIError) -> JSONResponse:
        if on_error is not None:
            on_error(err.status)
        return err.response(request.url.path)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "not_found" if exc.status_code == 404 else None
        return respond(request, APIError(str(exc.detail), status=exc.status_code, type=kind,
                                         code=code))

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        return respond(request, engine_dead(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return respond(request, server_error(f"internal server error ({type(exc).__name__})"))
