"""What the service tests share besides fixtures (those are in conftest.py): the API key, headers, the
problem content type, a feedback body builder, and a counter of engine calls."""
from __future__ import annotations

PROBLEM = "application/problem+json"
KEY = "test-key-123"
AUTH = {"X-API-Key": KEY}


def events(*pairs, **extra) -> dict:
    """A POST /v1/feedback body: one event per (user, item) pair, each with the `extra` fields."""
    return {"events": [{"user": u, "item": i, **extra} for u, i in pairs]}


def count_calls(monkeypatch, obj, name: str) -> list:
    """Patch obj.name to record each call (one entry per call) before calling through; returns the record."""
    calls: list = []
    original = getattr(obj, name)
    monkeypatch.setattr(obj, name, lambda *a, **kw: calls.append(1) or original(*a, **kw))
    return calls


def require_service(reason: str | None) -> None:
    """Skip a test whose external service (PostgreSQL, Java for Spark) is missing, for `reason`; but fail under
    `make test` (RECSYS_REQUIRE_SERVICES=1), where `make services` should have installed it."""
    import os

    import pytest

    if reason is None:
        return
    if os.environ.get("RECSYS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"RECSYS_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)
