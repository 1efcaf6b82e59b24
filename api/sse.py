"""Server-sent events: `data: <json>` events ended by `data: [DONE]`, errors in-stream.

The Responses and Messages APIs name each event (`event: <type>` before its data) and end
without `[DONE]`; `guarded_stream` takes their error event and end marker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from corral.engine.engine_errors import EngineDeadError

from .errors import APIError, engine_dead, server_error

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"


# Characters that JSON leaves raw but line readers (Python's `str.splitlines`, and so
# httpx's `iter_lines`) take as line breaks: escaped, an event is always one line.
_LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


def sse_event(body: dict[str, Any], event: str | None = None) -> str:
    """One event: `data: <json>` on one line, after `event: <name>` when `event` is given."""
    text = json.dumps(body, ensure_ascii=False, separators=(',', ':')).translate(_LINE_BREAKS)
    data = f"data: {text}\n\n"
    return f"event: {event}\n{data}" if event else data


def _openai_error_event(err: APIError) -> str:
    return sse_event(err.to_dict())


async def guarded_stream(events: AsyncIterator[str],
                         error_event: Callable[[APIError], str] = _openai_error_event,
                         done: str | None = DONE) -> AsyncIterator[str]:
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
