"""One error type and one handler: every failure leaves the server as an OpenAI error object.

The body is always `{"error": {"message", "type", "param", "code"}}`; stack traces never
reach a client. Pydantic validation errors become 400 (never FastAPI's 422) with `param`
set to the field path, e.g. `messages.0.content`.
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
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.to_dict(), status_code=self.status, headers=headers)

    @classmethod
    def from_value_error(cls, err: BaseException, param: str | None = None) -> APIError:
        """A 400 from a `ValueError`; `param` is the given one, else the field a
        `ParamError` names."""
        message = str(err) or type(err).__name__
        if param is None and isinstance(err, ParamError):
            param = err.param
        return cls(message, status=400, param=param)


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

    def respond(err: APIError) -> JSONResponse:
        if on_error is not None:
            on_error(err.status)
        return err.response()

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "not_found" if exc.status_code == 404 else None
        return respond(APIError(str(exc.detail), status=exc.status_code, type=kind, code=code))

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(_: Request, exc: EngineDeadError) -> JSONResponse:
        return respond(engine_dead(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return respond(server_error(f"internal server error ({type(exc).__name__})"))
