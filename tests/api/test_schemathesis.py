"""Property-based fuzzing of every route from the app's own OpenAPI document.

schemathesis generates requests (valid and invalid bodies, odd paths and parameters) for
each operation; none may answer 5xx or hang, and every error answer is a JSON error object
(`{"error": ...}`). The engine is the scripted stand-in (the API layer runs for real), so
this stays fast.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

EXAMPLES_PER_ROUTE = 30


def test_no_route_fails_or_hangs(scripted_app):
    app = scripted_app().app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    tried: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        fuzz(operation, f"{operation.method.upper()} {operation.path}", tried, failures)
    assert len(tried) >= 19 and all(n > 0 for n in tried.values()), tried
    assert failures == [], "\n".join(failures[:20])


def fuzz(operation, label: str, tried: dict[str, int], failures: list[str]) -> None:
    """Up to `EXAMPLES_PER_ROUTE` generated calls of one operation."""
    tried[label] = 0

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case):
        tried[label] += 1
        response = case.call(timeout=30)
        if response.status_code >= 500:
            failures.append(f"{label}: {response.status_code} {response.text[:300]}")
        elif response.status_code >= 400 and "error" not in response.json():
            failures.append(f"{label}: {response.status_code} without an error object")

    call()

