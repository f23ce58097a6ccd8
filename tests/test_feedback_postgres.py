"""Feedback in a real PostgreSQL server (tests/postgres_server.py): the store's contract, and two service
instances on different ports sharing one database (serving beyond one host)."""
from __future__ import annotations

import json
import signal
import threading
import urllib.error
import urllib.request

from server_support import AUTH, KEY, events

from recsys.feedback import Event, FeedbackStore
from recsys.service import BIN, environment, free_port, get_json, start, stop, wait_ready


def test_postgres_store_keeps_order_and_replays_once(postgres_url):
    store = FeedbackStore(postgres_url)
    assert store.engine.dialect.name == "postgresql" and store.history("u1") == []
    assert store.add([Event("u1", "b", 2.0, timestamp=20, event_id="e2"),
                      Event("u1", "a", 1.0, timestamp=10, event_id="e1")]) == (2, 0)
    assert store.add([Event("u1", "a", 1.0, timestamp=10, event_id="e1")]) == (0, 1)  # a replay
    assert store.history("u1") == [("a", 1.0), ("b", 2.0)]  # oldest first
    assert FeedbackStore(postgres_url).count() == 2  # a second store (another host) sees the same rows


def test_two_stores_create_the_schema_at_once(postgres_url):
    """Instances starting together on an empty database both create the table: neither may fail."""
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            FeedbackStore(postgres_url).count()
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _serve(bundle, port: int, db_url: str):
    env = environment(RECSYS_API_KEYS=KEY, RECSYS_FEEDBACK_DB_URL=db_url)
    return start([str(BIN / "recsys"), "serve", "--bundle", str(bundle), "--port", str(port), "--workers", "2"], env)


def _post(port: int, body: dict) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/feedback", method="POST",
                                     headers={**AUTH, "Content-Type": "application/json"},
                                     data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.status


def test_two_instances_share_feedback_and_a_killed_one_loses_no_acknowledged_event(models_root, postgres_url):
    """Two `recsys serve` instances (gunicorn, 2 workers each) on different ports, one PostgreSQL database.
    Both have answered (and cached) an unknown user's fallback; an event written through A changes B's answer
    at once, to A's. Then A is SIGKILLed while a writer streams events into it: every event A acknowledged is
    in the database, and B folds them in."""
    ports = free_port(), free_port()
    procs = [_serve(models_root, port, postgres_url) for port in ports]  # started together: one empty schema
    a, b = ports
    path = "/v1/users/drifter/recommendations?k=5"
    try:
        for proc, port in zip(procs, ports):
            wait_ready(proc, port)
        for port in ports * 3:
            assert get_json(port, path)[1]["fallback"] is True
        assert _post(a, events(("drifter", "i0001"), event_id="first")) == 201
        from_a, from_b = get_json(a, path)[1], get_json(b, path)[1]
        assert from_b["fallback"] is False and from_b["items"] == from_a["items"]

        acknowledged: list[str] = []
        refused: list[int] = []  # HTTP error answers: A was alive and failed the write (never expected)
        stop_writing = threading.Event()

        def writer() -> None:
            n = 0
            while not stop_writing.is_set():
                n += 1
                try:
                    if _post(a, events(("streamer", f"i{n % 50:04d}"), event_id=f"s{n}")) == 201:
                        acknowledged.append(f"s{n}")
                except urllib.error.HTTPError as err:  # (before OSError: an HTTPError is one)
                    refused.append(err.code)
                    return
                except OSError:
                    return  # A is gone: this request was never acknowledged

        thread = threading.Thread(target=writer)
        thread.start()
        while len(acknowledged) < 20:
            assert thread.is_alive()
            threading.Event().wait(0.01)
        stop(procs[0], signal.SIGKILL)  # mid-stream, no graceful shutdown
        stop_writing.set()
        thread.join(10)
        stored = {row.event_id for row in _rows(postgres_url)}
        assert set(acknowledged) <= stored and len(acknowledged) >= 20 and not refused, refused
        assert get_json(b, "/v1/users/streamer/recommendations?k=5")[1]["fallback"] is False
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc)


def _rows(url: str):
    import sqlalchemy as sa

    from recsys.feedback import events as table

    with FeedbackStore(url).engine.connect() as conn:
        return conn.execute(sa.select(table.c.event_id)).all()
