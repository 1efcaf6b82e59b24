"""Errors of the engine as a whole (not of one request's values)."""

from __future__ import annotations


class EngineDeadError(RuntimeError):
    """The engine can serve no more requests: its core process died or was shut down.

    Live requests fail with it, and new ones are refused with it; the server answers 503.
    """
