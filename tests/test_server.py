"""The REST service through Flask's test client, plus a real gunicorn process on a free local port."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from recsys import artifacts
from recsys.models import MF
from server import create_app

PROBLEM = "application/problem+json"


KEY = "test-key-123"
AUTH = {"X-API-Key": KEY}


@pytest.fixture()
def app(models_root, tmp_path):
    return create_app({"BUNDLE": str(models_root), "TESTING": True, "API_KEYS": [KEY],
                       "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'feedback.db'}"})


@pytest.fixture()
def client(app):
    return app.test_client()


def test_health(client):
    assert client.get("/livez").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["model_version"].endswith("-mf")


def test_not_ready_without_a_bundle_is_a_problem():
    client = create_app({"BUNDLE": None, "FEEDBACK_DB_URL": "sqlite://"}).test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.content_type == PROBLEM
    r = client.get("/v1/users/u0001/recommendations")
    assert r.status_code == 503 and r.content_type == PROBLEM


def test_corrupt_bundle_leaves_the_service_not_ready(models_root, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(artifacts.resolve(models_root), bad)
    (bad / "users.json").write_text("[]")
    r = create_app({"BUNDLE": str(bad), "FEEDBACK_DB_URL": "sqlite://"}).test_client().get("/readyz")
    assert r.status_code == 503 and "Checksum mismatch for users.json" in r.get_json()["detail"]


def test_recommendations_for_a_known_user(client, synthetic):
    user = synthetic.users.ids[0]
    body = client.get(f"/v1/users/{user}/recommendations?k=5").get_json()
    assert body["user"] == user and body["fallback"] is False and len(body["items"]) == 5
    seen = set(synthetic.items.ids[synthetic.matrix()[0].indices])
    assert not seen & {i["id"] for i in body["items"]}
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(i["title"].startswith("Item ") for i in body["items"])


def test_offset_pages_and_exclude_and_genre(client, synthetic):
    user = synthetic.users.ids[1]
    first = client.get(f"/v1/users/{user}/recommendations?k=6").get_json()["items"]
    page = client.get(f"/v1/users/{user}/recommendations?k=3&offset=3").get_json()["items"]
    assert [i["id"] for i in page] == [i["id"] for i in first[3:]]
    top = first[0]["id"]
    excluded = client.get(f"/v1/users/{user}/recommendations?k=6&exclude={top}").get_json()["items"]
    assert top not in {i["id"] for i in excluded} and len(excluded) == 6
    genre = client.get(f"/v1/users/{user}/recommendations?k=4&genre=cluster1").get_json()["items"]
    meta = synthetic.item_metadata.set_index("item")["genres"]
    assert len(genre) == 4 and all("cluster1" in meta[i["id"]] for i in genre)


def test_unknown_user_falls_back_to_popularity(client):
    body = client.get("/v1/users/stranger/recommendations?k=3").get_json()
    assert body["fallback"] is True and len(body["items"]) == 3
    popular = client.get("/v1/items/popular?k=3").get_json()["items"]
    assert [i["id"] for i in body["items"]] == [i["id"] for i in popular]


def test_batch_session_similar_item_and_model(client, synthetic):
    users = list(synthetic.users.ids[:3]) + ["stranger"]
    results = client.post("/v1/recommendations/batch", json={"users": users, "k": 4}).get_json()["results"]
    assert [r["user"] for r in results] == users and [r["fallback"] for r in results] == [False] * 3 + [True]
    single = client.get(f"/v1/users/{users[0]}/recommendations?k=4").get_json()
    assert results[0]["items"] == single["items"]
    session = client.post("/v1/sessions/recommendations", json={"items": ["i0001", "i0002"], "k": 5}).get_json()
    assert session["fallback"] is False and {"i0001", "i0002"}.isdisjoint(i["id"] for i in session["items"])
    similar = client.get("/v1/items/i0001/similar?k=4").get_json()
    assert similar["item"] == "i0001" and len(similar["items"]) == 4
    neighbours = client.get(f"/v1/users/{users[0]}/similar?k=2").get_json()
    assert len(neighbours["users"]) == 2
    item = client.get("/v1/items/i0001").get_json()
    assert item["id"] == "i0001" and item["title"] == "Item i0001" and item["genres"]
    info = client.get("/v1/model").get_json()
    assert info["model"] == "mf" and info["n_items"] == synthetic.n_items and "ndcg@10" not in info["metrics"]


@pytest.mark.parametrize("method, url, body, status", [
    ("get", "/v1/users/u0001/recommendations?k=0", None, 422),
    ("get", "/v1/users/u0001/recommendations?k=abc", None, 422),
    ("get", "/v1/users/u0001/recommendations?k=900&offset=900", None, 422),
    ("get", "/v1/items/nope/similar", None, 404),
    ("get", "/v1/items/nope", None, 404),
    ("get", "/v1/users/nobody/similar", None, 404),
    ("get", "/v1/nothing-here", None, 404),
    ("delete", "/v1/items/popular", None, 405),
    ("post", "/v1/recommendations/batch", "{not json", 400),
    ("post", "/v1/recommendations/batch", json.dumps({"users": []}), 422),
    ("post", "/v1/recommendations/batch", json.dumps({"k": 3}), 422),
    ("post", "/v1/sessions/recommendations", json.dumps({"items": "i0001"}), 422),
    ("get", "/v1/items/popular?genre=cluster1&k=-1", None, 422),
    ("get", "/docs/assets/../../etc/passwd", None, 404),
])
def test_errors_are_problem_json(client, method, url, body, status):
    r = getattr(client, method)(url, data=body, content_type="application/json")
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.content_type == PROBLEM
    problem = r.get_json()
    assert problem["status"] == status and problem["title"] and problem["detail"]


def test_validation_errors_name_the_field(client):
    problem = client.get("/v1/users/u0001/recommendations?k=0").get_json()
    assert "k" in problem["detail"] and problem["errors"]["query"]["k"]


def test_body_size_is_bounded(models_root):
    client = create_app({"BUNDLE": str(models_root), "MAX_CONTENT_LENGTH": 100,
                         "FEEDBACK_DB_URL": "sqlite://"}).test_client()
    r = client.post("/v1/recommendations/batch", json={"users": ["u"] * 100})
    assert r.status_code == 413 and r.content_type == PROBLEM


def test_openapi_and_offline_docs(client):
    spec = client.get("/openapi.json").get_json()
    paths = set(spec["paths"])
    assert {"/v1/users/{user_id}/recommendations", "/v1/recommendations/batch", "/v1/sessions/recommendations",
            "/v1/items/{item_id}/similar", "/v1/users/{user_id}/similar", "/v1/items/popular",
            "/v1/items/{item_id}", "/v1/model"} <= paths
    page = client.get("/docs").get_data(as_text=True)
    assert "/docs/assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert client.get(f"/docs/assets/{asset}").status_code == 200


def test_config_from_environment(models_root, monkeypatch):
    monkeypatch.setenv("RECSYS_BUNDLE", str(models_root))
    monkeypatch.setenv("RECSYS_MAX_K", "5")
    monkeypatch.setenv("RECSYS_FEEDBACK_DB_URL", "sqlite://")
    app = create_app()
    assert app.config["MAX_K"] == 5
    r = app.test_client().get("/v1/users/u0001/recommendations?k=6")
    assert r.status_code == 422 and "k + offset must be <= 5" in r.get_json()["detail"]


def test_server_never_imports_torch_or_models(models_root):
    config = repr({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://"})
    code = (f"import sys; from server import create_app; c = create_app({config}).test_client(); "
            "assert c.get('/v1/users/u0001/recommendations').status_code == 200; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('recsys.models')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(models_root, port: int, db_url: str, log: Path | None = None) -> subprocess.Popen:
    """`recsys serve` (gunicorn, 2 workers); its access log (stdout) goes to `log` if given."""
    recsys_bin = Path(sys.executable).parent / "recsys"
    env = {**os.environ, "RECSYS_API_KEYS": KEY, "RECSYS_FEEDBACK_DB_URL": db_url}
    out = subprocess.DEVNULL if log is None else log.open("ab")
    try:
        return subprocess.Popen([str(recsys_bin), "serve", "--bundle", str(models_root), "--port", str(port)],
                                stdout=out, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    finally:
        if log is not None:
            out.close()


def _get(port: int, path: str, timeout: float = 5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, json.loads(r.read())


def _wait_ready(proc: subprocess.Popen, port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if _get(port, "/readyz", 2)[0] == 200:
                return
        except OSError:
            pass
        assert proc.poll() is None, "the server exited"
        assert time.monotonic() < deadline, f"not ready in {seconds} s"
        time.sleep(0.3)


def _kill(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_gunicorn_smoke_and_acknowledged_feedback_survives_a_kill(models_root, tmp_path):
    """A real gunicorn (2 workers) on 127.0.0.1 via `recsys serve`. After a 201 for a feedback event the
    whole process group is SIGKILLed; after a restart the event is there and shapes the recommendations."""
    port, db = _free_port(), f"sqlite:///{tmp_path / 'fb.db'}"
    proc = _start(models_root, port, db)
    try:
        _wait_ready(proc, port)
        for _ in range(20):
            status, body = _get(port, "/v1/users/u0001/recommendations?k=3")
            assert status == 200 and len(body["items"]) == 3
        line = 'recsys_requests_total{endpoint="/v1/users/<string:user_id>/recommendations",method="GET",status="200"}'
        for _ in range(4):  # whichever worker answers, the count covers both
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            assert f"{line} 20.0" in text, [t for t in text.splitlines() if "recommendations" in t]
            assert "recsys_request_seconds_bucket" in text and "recsys_model_info" in text
        assert _get(port, "/v1/users/walk-in/recommendations?k=3")[1]["fallback"] is True
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/feedback", method="POST", headers={**AUTH, "Content-Type": "application/json"},
            data=json.dumps(events(("walk-in", "i0001"), event_id="crash-1")).encode())
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 201
        _kill(proc, signal.SIGKILL)  # right after the acknowledgement: no graceful shutdown
    finally:
        if proc.poll() is None:
            _kill(proc)
    from recsys.feedback import FeedbackStore

    assert FeedbackStore(db).history("walk-in") == [("i0001", 1.0)]
    proc = _start(models_root, port, db)
    try:
        _wait_ready(proc, port)
        assert _get(port, "/v1/users/walk-in/recommendations?k=3")[1]["fallback"] is False
    finally:
        _kill(proc)


# ------------------------------------------------------------------------------------ feedback and auth
def events(*pairs, **extra):
    return {"events": [{"user": u, "item": i, **extra} for u, i in pairs]}


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


def test_reads_can_require_a_key(models_root):
    client = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://", "API_KEYS": KEY,
                         "READ_REQUIRES_KEY": True}).test_client()
    assert client.get("/v1/items/popular").status_code == 401
    assert client.get("/v1/items/popular", headers=AUTH).status_code == 200
    for _ in range(2):  # the plain-query fast path and its cached answer are behind the key too
        assert client.get("/v1/users/u0001/recommendations?k=3").status_code == 401
        assert client.get("/v1/users/u0001/recommendations?k=3", headers=AUTH).status_code == 200
    assert client.get("/livez").status_code == 200, "health stays open"


def test_replayed_event_id_is_stored_once(client, app):
    body = events(("u0001", "i0003"), event_id="evt-1")
    assert client.post("/v1/feedback", json=body, headers=AUTH).get_json() == {"stored": 1, "duplicates": 0}
    assert client.post("/v1/feedback", json=body, headers=AUTH).get_json() == {"stored": 0, "duplicates": 1}
    assert app.extensions["recsys_feedback"].count() == 1


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
    url = app.extensions["recsys_feedback"].url
    assert main(["train", "--data", str(log), "--from-db", url, "--model", "popularity", "--no-index",
                 "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "2 events from the database" in out
    manifest = json.loads((tmp_path / "m" / "current" / "manifest.json").read_text())
    assert manifest["n_users"] == 4 and manifest["n_items"] == 4, "u9 and zz-new-item came from the database"


# ------------------------------------------------------------------------------------------- hot reload
@pytest.fixture()
def own_root(synthetic, tmp_path):
    """A models root of this test's own, so publishing new versions does not disturb other tests."""
    root = tmp_path / "models"
    model = MF(factors=8, epochs=2, progress=False, device="cpu").fit(synthetic)
    artifacts.publish(root, model.save(artifacts.new_version_path(root, "first")))
    return root, model


def test_admin_reload_swaps_and_refuses_a_corrupt_bundle(own_root, tmp_path):
    root, model = own_root
    client = create_app({"BUNDLE": str(root), "API_KEYS": KEY, "FEEDBACK_DB_URL": "sqlite://"}).test_client()
    first = client.get("/v1/model").get_json()["version"]
    assert client.post("/v1/admin/reload").status_code == 401
    second = model.save(artifacts.new_version_path(root, "second"))
    artifacts.publish(root, second)
    r = client.post("/v1/admin/reload", headers=AUTH).get_json()
    assert r == {"version": second.name, "previous": first, "workers_restarting": False}
    assert client.get("/v1/model").get_json()["version"] == second.name

    third = model.save(artifacts.new_version_path(root, "third"))
    artifacts.publish(root, third)
    (third / "items.json").write_text("[]")  # corrupted after publishing
    r = client.post("/v1/admin/reload", headers=AUTH)
    assert r.status_code == 409 and r.content_type == PROBLEM and "Checksum mismatch" in r.get_json()["detail"]
    assert client.get("/v1/model").get_json()["version"] == second.name, "the old model keeps serving"
    assert client.get("/v1/users/u0001/recommendations?k=3").status_code == 200


def test_sighup_reload_under_load_drops_nothing(own_root, tmp_path):
    """A bounded client loop on 127.0.0.1 keeps requesting while a new bundle is published and the master
    gets SIGHUP: zero failed requests, and the new version is served afterwards."""
    import threading

    root, model = own_root
    port = _free_port()
    proc = _start(root, port, f"sqlite:///{tmp_path / 'fb.db'}")
    failures, versions, done = [], set(), threading.Event()

    def client_loop() -> None:
        for _ in range(2000):
            if done.is_set():
                return
            try:
                status, body = _get(port, "/v1/users/u0001/recommendations?k=5")
                versions.add(body["model_version"])
                if status != 200 or len(body["items"]) != 5:
                    failures.append(status)
            except Exception as e:  # noqa: BLE001 - any failure counts
                failures.append(repr(e))

    try:
        _wait_ready(proc, port)
        threads = [threading.Thread(target=client_loop) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        second = model.save(artifacts.new_version_path(root, "second"))
        artifacts.publish(root, second)
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _get(port, "/v1/model")[1]["version"] != second.name:
            assert time.monotonic() < deadline, "the new bundle was not served within 30 s"
            time.sleep(0.2)
        time.sleep(1.0)
        done.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        done.set()
        _kill(proc)
    assert failures == []
    assert second.name in versions and len(versions) == 2


def test_metrics_count_requests(client):
    client.get("/v1/items/popular?k=2")
    client.get("/v1/items/nope")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'recsys_requests_total{endpoint="/v1/items/popular",method="GET",status="200"}' in text
    assert 'endpoint="/v1/items/<string:item_id>",method="GET",status="404"' in text
    assert "recsys_model_info{" in text


def test_request_limits_come_from_config(models_root):
    client = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://", "MAX_BATCH_USERS": 2,
                         "MAX_HISTORY_ITEMS": 1, "API_KEYS": KEY, "MAX_FEEDBACK_EVENTS": 1}).test_client()
    r = client.post("/v1/recommendations/batch", json={"users": ["a", "b", "c"]})
    assert r.status_code == 422 and "At most 2 users per request (got 3)" in r.get_json()["detail"]
    r = client.post("/v1/sessions/recommendations", json={"items": ["i0001", "i0002"]})
    assert r.status_code == 422 and "history items" in r.get_json()["detail"]
    r = client.post("/v1/feedback", json=events(("u", "i"), ("u", "j")), headers=AUTH)
    assert r.status_code == 422 and "events" in r.get_json()["detail"]


# ------------------------------------------------------------------------- hot-path caches (issue 4 target)
def test_answers_are_cached_per_model_and_bypassed_by_feedback(app, client, synthetic, monkeypatch):
    """A repeated request for a user without feedback is answered from the loaded model's response cache
    (the engine is not called again); other parameters are other entries; a feedback event sends the user
    down the fold-in path at once."""
    engine = app.extensions["recsys_state"].current.engine
    calls = []
    original = engine.recommend_indices
    monkeypatch.setattr(engine, "recommend_indices", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    user = synthetic.users.ids[2]
    first = client.get(f"/v1/users/{user}/recommendations?k=5")
    again = client.get(f"/v1/users/{user}/recommendations?k=5")
    assert len(calls) == 1 and again.get_data() == first.get_data()
    assert again.content_type == "application/json" and again.get_json()["fallback"] is False
    client.get(f"/v1/users/{user}/recommendations?k=4")
    client.get(f"/v1/users/{user}/recommendations?k=5&include_seen=true")
    client.get(f"/v1/users/{user}/recommendations?k=5&exclude=i0001")
    assert len(calls) == 4, "k, include_seen and exclude are part of the key"
    client.post("/v1/feedback", json=events((user, first.get_json()["items"][0]["id"])), headers=AUTH)
    after = client.get(f"/v1/users/{user}/recommendations?k=5").get_json()
    assert first.get_json()["items"][0]["id"] not in [i["id"] for i in after["items"]]
    assert len(calls) == 4, "a user with feedback is folded in, not served from the cache"


def test_response_cache_can_be_turned_off(models_root, synthetic, monkeypatch):
    app = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://", "RESPONSE_CACHE_BYTES": 0})
    engine = app.extensions["recsys_state"].current.engine
    calls = []
    original = engine.recommend_indices
    monkeypatch.setattr(engine, "recommend_indices", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    client = app.test_client()
    for _ in range(3):
        assert client.get(f"/v1/users/{synthetic.users.ids[0]}/recommendations?k=3").status_code == 200
    assert len(calls) == 3 and len(app.extensions["recsys_state"].current.responses) == 0


def test_reload_starts_a_new_response_cache(own_root):
    root, model = own_root
    app = create_app({"BUNDLE": str(root), "API_KEYS": KEY, "FEEDBACK_DB_URL": "sqlite://"})
    client = app.test_client()
    first = client.get("/v1/users/u0001/recommendations?k=3").get_json()["model_version"]
    second = model.save(artifacts.new_version_path(root, "second"))
    artifacts.publish(root, second)
    assert client.post("/v1/admin/reload", headers=AUTH).status_code == 200
    body = client.get("/v1/users/u0001/recommendations?k=3").get_json()
    assert first != second.name and body["model_version"] == second.name


def test_response_cache_is_bounded_lru_by_bytes():
    from server.state import ResponseCache

    entry = 100 + ResponseCache.ENTRY_OVERHEAD
    cache = ResponseCache(2 * entry)
    cache.put(("a",), b"A" * 100)
    cache.put(("b",), b"B" * 100)
    assert cache.get(("a",)) == b"A" * 100  # now b is the least recently used
    cache.put(("c",), b"C" * 100)
    assert cache.get(("b",)) is None and cache.get(("a",)) and cache.get(("c",))
    assert len(cache) == 2 and cache.bytes == 2 * entry and (cache.hits, cache.misses) == (3, 1)
    cache.put(("a",), b"A" * 100)  # replacing an entry does not count it twice
    assert len(cache) == 2 and cache.bytes == 2 * entry
    cache.put(("big",), b"x" * (2 * entry))  # larger than the whole budget: not kept, nothing evicted
    assert cache.get(("big",)) is None and len(cache) == 2
    off = ResponseCache(0)
    off.put(("a",), b"A")
    assert off.get(("a",)) is None and off.bytes == 0


PLAIN = {"": (10, 0, False), "k=7": (7, 0, False), "k=5&offset=2": (5, 2, False), "offset=3": (10, 3, False),
         "k=5&include_seen=true": (5, 0, True), "include_seen=0&k=3": (3, 0, False), "k=1000": (1000, 0, False),
         "k=007": (7, 0, False), "include_seen=YES": (10, 0, True), "offset=1000&k=1": (1, 1000, False)}
NOT_PLAIN = ["k=0", "k=1001", "k=abc", "k=+5", "k=5.0", "k= 5", "k=1&k=2", "offset=-1", "offset=1001",
             "include_seen=maybe", "include_seen=", "exclude=i0001", "genre=cluster1", "unknown=1", "k=\u0663"]


@pytest.mark.parametrize("query", [*PLAIN, *NOT_PLAIN])
def test_plain_query_parsing_agrees_with_the_schema(query):
    """The webargs-free parser accepts only query strings RecommendQuery accepts, with the same values; it
    declines everything else (the decorated view then validates it and reports errors)."""
    from urllib.parse import parse_qsl

    from werkzeug.datastructures import MultiDict

    from server import schemas
    from server.api import _plain_query

    args = MultiDict(parse_qsl(query, keep_blank_values=True))
    if query not in PLAIN:
        assert _plain_query(args) is None
        return
    loaded = schemas.RecommendQuery().load(args.to_dict())
    assert _plain_query(args) == PLAIN[query] == (loaded["k"], loaded["offset"], loaded["include_seen"])


def test_plain_queries_declined_still_fail_as_before(client):
    for query in ("k=0", "k=1001", "k=abc", "offset=-1", "include_seen=maybe"):
        r = client.get(f"/v1/users/u0001/recommendations?{query}")
        assert r.status_code == 422 and r.content_type == PROBLEM and r.get_json()["errors"]["query"], query


@pytest.mark.parametrize("query, n", [("k=6", 6), ("k=4&offset=2", 4), ("k=5&include_seen=true", 5),
                                      ("include_seen=off&k=5", 5), ("k=200&include_seen=1", 200)])
def test_fast_path_answers_like_the_full_path(client, synthetic, query, n):
    """The same answer through the plain parser and through webargs (an exclude of an unknown item makes the
    parser decline without changing the answer)."""
    user = synthetic.users.ids[3]
    fast = client.get(f"/v1/users/{user}/recommendations?{query}").get_json()
    full = client.get(f"/v1/users/{user}/recommendations?{query}&exclude=no-such-item").get_json()
    assert fast == full and len(fast["items"]) == n


def test_fast_path_honours_include_seen(client, synthetic):
    user = synthetic.users.ids[3]
    seen = set(synthetic.items.ids[synthetic.matrix()[3].indices])
    every = client.get(f"/v1/users/{user}/recommendations?k=200&include_seen=true").get_json()["items"]
    unseen = client.get(f"/v1/users/{user}/recommendations?k=200").get_json()["items"]
    assert seen and seen <= {i["id"] for i in every} and not seen & {i["id"] for i in unseen}
    assert len(every) == synthetic.n_items and len(unseen) == synthetic.n_items - len(seen)


# ----------------------------------------------------------------------------- feedback store: no-history memory
def _count_queries(store) -> list[str]:
    import sqlalchemy as sa

    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
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


def test_feedback_reaches_every_gunicorn_worker_at_once(models_root, tmp_path):
    """Both workers of a real gunicorn have answered (and cached) a user's fallback recommendations; after one
    feedback event, every answer from either worker is folded in. The access log names the worker."""
    port, log = _free_port(), tmp_path / "access.log"
    proc = _start(models_root, port, f"sqlite:///{tmp_path / 'fb.db'}", log=log)
    path = "/v1/users/drifter/recommendations?k=5"

    def answers_from_both_workers(expect_fallback: bool, start: int) -> None:
        """Requests (each on a new connection) until both workers have answered since log line `start`."""
        deadline = time.monotonic() + 30
        while True:
            assert _get(port, path)[1]["fallback"] is expect_fallback
            lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            workers = {line["worker"] for line in lines[start:] if path in line["request"]}
            if len(workers) >= 2:
                return
            assert time.monotonic() < deadline, f"only {workers} answered in 30 s"

    try:
        _wait_ready(proc, port)
        answers_from_both_workers(True, 0)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/feedback", method="POST", headers={**AUTH, "Content-Type": "application/json"},
            data=json.dumps(events(("drifter", "i0001"))).encode())
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 201
        answers_from_both_workers(False, len(log.read_text().splitlines()))
    finally:
        _kill(proc)


def test_gunicorn_hooks_freeze_the_preloaded_app_and_reload_unfreezes(models_root, monkeypatch):
    """pre_fork moves the preloaded objects out of the garbage collector's reach (a full collection over the
    loaded model stalled a worker for 0.2-0.6 s under load); on_reload unfreezes so the old model can go."""
    import gc
    from types import SimpleNamespace

    monkeypatch.setattr(os, "environ", dict(os.environ))  # the config sets defaults in the environment
    conf = Path(__file__).resolve().parents[1] / "server" / "gunicorn.conf.py"
    hooks: dict = {"__file__": str(conf)}
    exec(compile(conf.read_text(), str(conf), "exec"), hooks)  # noqa: S102 - the repository's own file
    app = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://"})
    server = SimpleNamespace(app=SimpleNamespace(wsgi=lambda: app), log=SimpleNamespace(error=print))
    try:
        hooks["pre_fork"](server, None)
        assert gc.get_freeze_count() > 0
        before = app.extensions["recsys_state"].current
        hooks["on_reload"](server)
        assert gc.get_freeze_count() == 0 and app.extensions["recsys_state"].current is not before
    finally:
        gc.unfreeze()
