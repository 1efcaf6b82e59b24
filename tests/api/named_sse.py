"""Reading named server-sent events (`event: <type>` + `data: <json>`) in tests."""

from __future__ import annotations

import json
from typing import Any


def parse_named_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event of a stream body; every event must be named and
    its data must be JSON."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        assert len(lines) == 2, block
        events.append((lines[0][len("event: "):], json.loads(lines[1][len("data: "):])))
    return events
