"""Admission control: a bound on the requests waiting for the engine, and request deadlines.

A request *waits* from the moment it is admitted until the engine gives its first output
(its prompt is being computed or queued behind others). With `max_waiting` set, a request
that finds that many already waiting is refused at once with HTTP 429 and a `Retry-After`
header, instead of joining a queue that grows without bound. With `request_timeout` set, a
request still generating after that many seconds is aborted (its KV blocks freed) and
answered with HTTP 504, or an error event where its stream has begun.
"""

from __future__ import annotations

from .errors import APIError

RETRY_AFTER_S = 1  # what a refused client is told to wait


class Admission:
    """Counts waiting requests and arms deadlines; one per app, used on the event loop."""

    def __init__(self, max_waiting: int | None = None,
                 request_timeout: float | None = None) -> None:
        self.max_waiting = max_waiting
        self.request_timeout = request_timeout
        self.num_waiting = 0
        self.num_refused = 0  # (the error handler counts them in /metrics by status)

    def admit(self) -> None:
        """Count one more waiting request, or refuse it (`APIError` 429) when full."""
        if self.max_waiting is not None and self.num_waiting >= self.max_waiting:
            self.num_refused += 1
            raise APIError(
                f"the server is at capacity ({self.num_waiting} requests waiting); retry in "
                f"{RETRY_AFTER_S} s", status=429, type="rate_limit_error", code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_S)})
        self.num_waiting += 1

    def started(self) -> None:
        """A waiting request got its first output (or ended): it waits no more."""
        self.num_waiting -= 1


def timed_out(seconds: float) -> APIError:
    return APIError(f"the request did not finish within the server's request timeout "
                    f"({seconds:g} s)", status=504, type="server_error", code="request_timeout")
