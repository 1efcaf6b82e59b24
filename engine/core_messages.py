"""The messages between the API process and an engine-core process (msgspec MessagePack).

Client -> core: `AddRequest`, `AbortRequests`, `UtilityCall`, `Shutdown`.
Core -> client: `Ready` or `StartupFailed` once, then `StepOutputs` (deltas and stats) and
`Reply` (to a `UtilityCall`, by its id). Every message is a tagged array; the decoders
check the types of every field, and `SamplingParams` / `StructuredOutputsParams` are
rebuilt through their own `__post_init__` validation, so nothing is unpickled.
The structs hold no reference cycles, so they are left untracked by the garbage collector
(`gc=False`): decoding a step's deltas then sets off no collections.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from corral.grammars.param_error import ParamError
from corral.grammars.spec import _normalize_json_field

from .engine_stats import EngineStats
from .outputs import RequestMetrics
from .sampling_params import SamplingParams, StructuredOutputsParams

# (token_id, logprob, [(top token_id, logprob), ...])
WireLogprob = tuple[int, float, list[tuple[int, float]]]


class ErrorInfo(msgspec.Struct, gc=False, array_like=True, omit_defaults=True):
    """An exception across the boundary: its kind, message, and the field a ParamError
    names (then `message` is its detail)."""

    kind: str  # "param" | "value" | "key" | "runtime"
    message: str
    param: str | None = None

    @classmethod
    def from_exception(cls, error: BaseException) -> ErrorInfo:
        if isinstance(error, ParamError):
            return cls("param", error.detail, error.param)
        if isinstance(error, ValueError):
            return cls("value", str(error))
        if isinstance(error, KeyError):
            return cls("key", str(error.args[0]) if error.args else "")
        return cls("runtime", f"{type(error).__name__}: {error}")

    def to_exception(self) -> Exception:
        if self.kind == "param":
            return ParamError(self.param or "", self.message)
        if self.kind == "value":
            return ValueError(self.message)
        if self.kind == "key":
            return KeyError(self.message)
        return RuntimeError(self.message)


# ---- client -> core ------------------------------------------------------------------------


class AddRequest(msgspec.Struct, gc=False, tag="add", array_like=True):
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


class AbortRequests(msgspec.Struct, gc=False, tag="abort", array_like=True):
    request_ids: list[str]


class UtilityCall(msgspec.Struct, gc=False, tag="call", array_like=True):
    """A grammar call answered by a `Reply` with the same `call_id`: `method` is one of
    validate(spec), register(name, definition, syntax), unregister(name), grammars()."""

    call_id: int
    method: str
    args: list[Any]


class Shutdown(msgspec.Struct, gc=False, tag="shutdown", array_like=True):
    pass


ClientMessage = Union[AddRequest, AbortRequests, UtilityCall, Shutdown]  # noqa: UP007


# ---- core -> client ------------------------------------------------------------------------


class Ready(msgspec.Struct, gc=False, tag="ready", array_like=True):
    """The engine is built: the facts the client exposes as its own attributes."""

    model_name: str
    max_model_len: int
    num_kv_blocks: int
    vocab_size: int
    pid: int


class StartupFailed(msgspec.Struct, gc=False, tag="failed", array_like=True):
    error: ErrorInfo


class Reply(msgspec.Struct, gc=False, tag="reply", array_like=True, omit_defaults=True):
    call_id: int
    value: Any = None
    error: ErrorInfo | None = None


class SeqDelta(msgspec.Struct, gc=False, array_like=True, omit_defaults=True):
    """What changed in one completion since the last delta: its text from character
    `text_start` on, its token ids from `token_start` on, its logprobs from `logprob_start`
    on (the starts are normally the lengths already sent; the client cuts there first)."""

    index: int
    text_start: int
    text: str
    token_start: int
    token_ids: list[int]
    logprob_start: int = 0
    logprobs: list[WireLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class RequestDelta(msgspec.Struct, gc=False, array_like=True, omit_defaults=True):
    """One request's change in one step: the completions that changed; `metrics` when its
    first-scheduled, first-token or finished time (or cached-token count) changed;
    `exception` when it was refused or failed with the engine."""

    request_id: str
    seqs: list[SeqDelta]
    finished: bool = False
    error: str | None = None
    metrics: RequestMetrics | None = None
    exception: ErrorInfo | None = None


class StepOutputs(msgspec.Struct, gc=False, tag="outputs", array_like=True,
                  omit_defaults=True):
    """A step's deltas and the engine's stats after it; grammar samples since the last."""

    deltas: list[RequestDelta]
    stats: EngineStats | None = None
    compile_seconds: list[float] = []
    mask_seconds: list[float] = []


CoreMessage = Union[Ready, StartupFailed, Reply, StepOutputs]  # noqa: UP007


def client_decoder() -> msgspec.msgpack.Decoder:
    """Decodes what the core sends."""
    return msgspec.msgpack.Decoder(CoreMessage)


def core_decoder() -> msgspec.msgpack.Decoder:
    """Decodes what the client sends."""
    return msgspec.msgpack.Decoder(ClientMessage)


# ---- parameters ----------------------------------------------------------------------------


def wire_params(params: SamplingParams) -> SamplingParams:
    """`params` as they can cross to the core: a `json` constraint given as a pydantic class
    or an outlines type becomes its schema or regex text. ParamError for what cannot cross
    (user logits processors are Python objects of this process)."""
    if params.logits_processors:
        raise ParamError("logits_processors", "user logits processors need the in-process "
                         "engine (corral serve --engine-in-process, or the LLM class)")
    spec = params.structured_outputs
    if spec is None or _is_plain(spec.json):
        return params
    return params.clone(structured_outputs=wire_structured(spec))


def wire_structured(spec: StructuredOutputsParams) -> StructuredOutputsParams:
    """`spec` with a `json` field of plain JSON values (see `wire_params`)."""
    if _is_plain(spec.json):
        return spec
    kind, text = _normalize_json_field(spec.json)
    field = {"json": "json", "regex": "regex", "grammar": "grammar"}[kind]
    return StructuredOutputsParams(**{field: text}, backend=spec.backend)


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (str, bytes, bool, int, float)):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return False
