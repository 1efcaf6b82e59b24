"""Server-sent events stay one line each whatever the text holds."""

from __future__ import annotations

import json

from corral.api.sse import sse_event


def test_text_with_unicode_line_breaks_stays_on_one_line():
    # Random tokens decode to these; JSON leaves them raw, line readers split on them.
    text = "a\u2028b\u2029c\x85d\x1ce\nf\rg"
    event = sse_event({"text": text}, event="delta")
    lines = event.decode().splitlines()
    assert lines == ["event: delta", lines[1], ""] and lines[1].startswith("data: ")
    assert json.loads(lines[1][6:]) == {"text": text}
