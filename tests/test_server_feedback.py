"""Feedback: POST /v1/feedback (keys, idempotency, validation), its effect on recommendations, training from
the stored events, and the store's memory of users without events (threads, processes, fork)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from server_support import AUTH, KEY, PROBLEM, events

from server import create_app
from server.state import get_feedback


def test_writes_need_a_valid_key(client):
    r = client.post("/v1/feedback", json=events(("u0001", "i0001")))
    assert r.status_code == 401 and r.content_type == PROBLEM and r.headers["WWW-Authenticate"] == "ApiKey"
    r = client.post("/v1/feedback", json=events(("u0001", "i0001")), headers={"X-API-Key": "nope"})
    assert r.status_code == 403 and r.content_type == PROBLEM
    r = client.post("/v1/feedback", json=events(("u0001", "i0001")), headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 201 and r.get_json() == {"stored": 1, "duplicates": 0}


def test_no_configured_keys_means_no_writes(models_root):
    client = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://"}).test_client()
    r = client.post("/v1/feedback", json=events(("u", "i")), headers=AUTH)
    assert r.status_code == 401 and "none is configured" in r.get_json()["detail"]


def test_replayed_event_id_is_stored_once(client, app):
    body = events(("u0001", "i0003"), event_id="evt-1")
    assert client.post("/v1/feedback", json=body, headers=AUTH).get_json() == {"stored": 1, "duplicates": 0}
    assert client.post("/v1/feedback", json=body, headers=AUTH).get_json() == {"stored": 0, "duplicates": 1}
    assert get_feedback(app).count() == 1


def test_bad_events_are_named(client):
    r = client.post("/v1/feedback", json={"events": [{"user": "u0001"}]}, headers=AUTH)
    assert r.status_code == 422 and "item" in r.get_json()["detail"]
    r = client.post("/v1/feedback", json={"events": [{"user": "u", "item": "i", "weight": "x"}]}, headers=AUTH)
    assert r.status_code == 422 and "weight" in r.get_json()["detail"]


def test_feedback_changes_recommendations_at_once(client, synthetic):
    cluster = synthetic.item_metadata.set_index("item")["genres"]
    in_cluster = [i for i in synthetic.items.ids if "cluster2" in cluster[i]][:8]
    before = client.get("/v1/users/newcomer/recommendations?k=10").get_json()
    assert before["fallback"] is True
    client.post("/v1/feedback", json=events(*[("newcomer", i) for i in in_cluster]), headers=AUTH)
    after = client.get("/v1/users/newcomer/recommendations?k=10").get_json()
    assert after["fallback"] is False and after["items"] != before["items"]
    got = [i["id"] for i in after["items"]]
    assert not set(got) & set(in_cluster), "what they interacted with is excluded"
    share = sum("cluster2" in cluster[i] for i in got) / len(got)
    assert share >= 0.5, f"folded-in history should pull towards its cluster ({share:.0%})"

    user = synthetic.users.ids[0]
    known_before = [i["id"] for i in client.get(f"/v1/users/{user}/recommendations?k=5").get_json()["items"]]
    client.post("/v1/feedback", json=events((user, known_before[0])), headers=AUTH)
    known_after = [i["id"] for i in client.get(f"/v1/users/{user}/recommendations?k=5").get_json()["items"]]
    assert known_before[0] not in known_after


def test_train_from_db_adds_stored_events(client, app, tmp_path, capsys):
    from recsys.cli import main

    log = tmp_path / "log.csv"
    log.write_text("user,item\nu1,a\nu1,b\nu2,b\nu2,c\nu3,a\n")
    client.post("/v1/feedback", json=events(("u9", "zz-new-item"), ("u1", "c")), headers=AUTH)
    url = get_feedback(app).url
    assert main(["train", "--data", str(log), "--from-db", url, "--model", "popularity", "--no-index",
                 "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "2 events from the database" in out
    manifest = json.loads((tmp_path / "m" / "current" / "manifest.json").read_text())
    assert manifest["n_users"] == 4 and manifest["n_items"] == 4, "u9 and zz-new-item came from the database"


def _count_queries(store) -> list[str]:
    """The statements the store sends: through SQLAlchemy, and the history look-ups of its plain sqlite3
    readers (SQLite files; the memory's own watcher statements are not counted)."""
    import sqlalchemy as sa

    from recsys.feedback import HISTORY_SQL

    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    readers = store._readers
    if readers is not None:
        get = readers.get

        def traced():
            connection = get()
            select = HISTORY_SQL.split(" WHERE")[0]  # the trace shows the statement with its value bound
            connection.set_trace_callback(lambda sql: statements.append(sql) if sql.startswith(select) else None)
            return connection

        readers.get = traced
    return statements


def test_feedback_store_skips_the_database_for_users_without_events(tmp_path):
    from recsys.feedback import Event, FeedbackStore

    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}", no_history_cache=2)
    queries = _count_queries(store)
    assert store.history("a") == [] and len(queries) == 1
    assert store.history("a") == [] and len(queries) == 1, "remembered: no query"
    store.add([Event("a", "i1")])
    assert store.history("a") == [("i1", 1.0)], "its own write is seen at once"
    store.history("b")
    store.history("c")
    store.history("d")  # the memory holds 2 users: b is forgotten first
    n = len(queries)
    store.history("d")
    assert len(queries) == n
    store.history("b")
    assert len(queries) == n + 1


def test_histories_of_many_users_are_one_query_and_match_each_history(tmp_path):
    """The batch endpoint's read: one query for every user not remembered to have none, the same lists as
    `history` (oldest first), and the users found empty are remembered."""
    from recsys.feedback import Event, FeedbackStore

    for url in (f"sqlite:///{tmp_path / 'fb.db'}", "sqlite://"):
        store = FeedbackStore(url)
        store.add([Event("a", "i2", 2.0, timestamp=20), Event("b", "i1", timestamp=5), Event("a", "i1", timestamp=10)])
        queries = _count_queries(store)
        found = store.histories(["a", "b", "c"])
        assert found == {"a": [("i1", 1.0), ("i2", 2.0)], "b": [("i1", 1.0)], "c": []}
        assert len(queries) == 1
        assert found == {u: store.history(u) for u in "abc"}
        if url != "sqlite://":
            del queries[:]
            assert store.histories(["c"]) == {"c": []} and queries == [], "c was remembered"


def test_feedback_store_sees_commits_from_other_processes(tmp_path):
    """Two stores on one file stand for two gunicorn workers; a third writer is another process."""
    from recsys.feedback import Event, FeedbackStore

    url = f"sqlite:///{tmp_path / 'fb.db'}"
    reader, writer = FeedbackStore(url), FeedbackStore(url)
    queries = _count_queries(reader)
    assert reader.history("u") == [] and reader.history("v") == [] and reader.history("u") == []
    assert len(queries) == 2
    writer.add([Event("u", "i1", event_id="e1")])
    assert reader.history("u") == [("i1", 1.0)]
    assert reader.history("v") == [] and len(queries) == 3, "v is still remembered: only u was written"
    code = ("from recsys.feedback import Event, FeedbackStore; "
            f"FeedbackStore({url!r}).add([Event('v', 'i2', weight=2.0)])")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert reader.history("v") == [("i2", 2.0)]


def _history_in_child(reader, writer_url: str, user: str, expected: list) -> None:
    from recsys.feedback import Event, FeedbackStore

    FeedbackStore(writer_url).add([Event(user, "i9")])
    os._exit(0 if reader.history(user) == expected else 1)


def test_feedback_store_memory_survives_threads_and_fork(tmp_path):
    """Right answers from a new thread (its own watcher connection catches up) and from a forked child (a
    gunicorn worker: it opens its own connection and starts from an empty memory)."""
    import multiprocessing
    import threading

    from recsys.feedback import Event, FeedbackStore

    url = f"sqlite:///{tmp_path / 'fb.db'}"
    reader = FeedbackStore(url)
    assert reader.history("t") == [] and reader.history("f") == []
    FeedbackStore(url).add([Event("t", "i1")])
    seen = []
    thread = threading.Thread(target=lambda: seen.append(reader.history("t")))
    thread.start()
    thread.join()
    assert seen == [[("i1", 1.0)]]
    child = multiprocessing.get_context("fork").Process(target=_history_in_child,
                                                        args=(reader, url, "f", [("i9", 1.0)]))
    child.start()
    child.join(60)
    assert child.exitcode == 0


def test_in_memory_and_uncached_stores_always_query(tmp_path):
    from recsys.feedback import Event, FeedbackStore

    for store in (FeedbackStore("sqlite://"), FeedbackStore(f"sqlite:///{tmp_path / 'x.db'}", no_history_cache=0)):
        queries = _count_queries(store)
        assert store.history("u") == [] and store.history("u") == []
        store.add([Event("u", "i1")])
        assert store.history("u") == [("i1", 1.0)]
        assert len(queries) == 3 + 1  # + the insert
