"""Server-sent events: `data: <json>` events ended by `data: [DONE]`, errors in-stream.

The Responses and Messages APIs name each event (`event: <type>` before its data) and end
without `[DONE]`; `guarded_stream` takes their error event and end marker.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from corral.engine.engine_errors import EngineDeadError

from .errors import APIError, engine_dead, server_error

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


# Characters that JSON leaves raw but line readers (Python's `str.splitlines`, and so
# httpx's `iter_lines`) take as line breaks, as UTF-8: escaped, an event is always one line.
_LINE_BREAKS = [(c.encode(), f"\\u{ord(c):04x}".encode()) for c in "\x85\u2028\u2029"]
_json_encode = msgspec.json.Encoder().encode  # compact, UTF-8 (no ASCII escapes)


def sse_event(body: dict[str, Any], event: str | None = None) -> bytes:
    """One event: `data: <json>` on one line, after `event: <name>` when `event` is given.
    Bytes, as they go on the wire (one encoding per event, none after)."""
    text = _json_encode(body)
    if b"\xc2\x85" in text or b"\xe2\x80" in text:
        for raw, escaped in _LINE_BREAKS:
            text = text.replace(raw, escaped)
    data = b"data: " + text + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data


def _openai_error_event(err: APIError) -> bytes:
    return sse_event(err.to_dict())


async def guarded_stream(events: AsyncIterator[bytes],
                         error_event: Callable[[APIError], bytes] = _openai_error_event,
                         done: bytes | None = DONE) -> AsyncIterator[bytes]:
    """The events, then `done` (if any); an error after the stream began becomes
    `error_event(error)`."""
    try:
        async for event in events:
            yield event
    except APIError as e:
        yield error_event(e)
    except EngineDeadError as e:
        yield error_event(engine_dead(e))
    except Exception as e:  # noqa: BLE001 - the status line is gone; report in-stream
        logger.exception("error while streaming")
        yield error_event(server_error(f"internal server error ({type(e).__name__})"))
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    if done:
        yield done
