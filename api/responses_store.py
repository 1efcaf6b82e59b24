"""Stored responses of the Responses API, in an embedded SQLite database.

Each stored response keeps its response object and its conversation so far: the input
items of every earlier turn (with their outputs) and its own, so `previous_response_id`
continues a conversation from one row, and the conversation survives a restart of the
server. `:memory:` keeps them for the life of the process only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    response TEXT NOT NULL,  -- the response object (JSON)
    input_items TEXT NOT NULL  -- the conversation before its output (JSON list of items)
)
"""


def default_responses_db() -> Path:
    """`$CORRAL_CACHE_DIR/responses.sqlite3`, else under `~/.cache/corral`."""
    from corral.engine.model_files import cache_root

    return cache_root() / "responses.sqlite3"


@dataclass(frozen=True)
class StoredResponse:
    """A stored response object and the input items it answered (history included)."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]

    def conversation(self) -> list[dict[str, Any]]:
        """The items a follow-up continues: the inputs, then this response's output."""
        return [*self.input_items, *self.response.get("output", [])]


class ResponseStore:
    """Responses by id in one SQLite file (thread-safe; calls are short)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute(_SCHEMA)

    def put(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        """Store (or replace) `response`, which answered `input_items`."""
        row = (response["id"], int(response.get("created_at", 0)),
               json.dumps(response, ensure_ascii=False),
               json.dumps(input_items, ensure_ascii=False))
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)", row)

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute("SELECT response, input_items FROM responses WHERE id = ?",
                                   (response_id,)).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]))

    def delete(self, response_id: str) -> bool:
        """Delete a response; False when there was none with that id."""
        with self._lock, self._db:
            cursor = self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cursor.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
