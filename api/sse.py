"""Server-sent events: `data: <json>` events ended by `data: [DONE]`, errors in-stream."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from corral.engine.engine_errors import EngineDeadError

from .errors import APIError, engine_dead, server_error

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"


def sse_event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def guarded_stream(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """The events, then `[DONE]`; an error after the stream began becomes an error event."""
    try:
        async for event in events:
            yield event
    except APIError as e:
        yield sse_event(e.to_dict())
    except EngineDeadError as e:
        yield sse_event(engine_dead(e).to_dict())
    except Exception as e:  # noqa: BLE001 - the status line is gone; report in-stream
        logger.exception("error while streaming")
        yield sse_event(server_error(f"internal server error ({type(e).__name__})").to_dict())
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    yield DONE
