"""The service as real gunicorn processes on free loopback ports (`recsys serve`, 2 workers): crash safety of
acknowledged feedback, SIGHUP reload under load, feedback seen by every worker, and the gunicorn hooks."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from server_support import AUTH, KEY, events

from recsys.bundle import new_version_path, publish
from recsys.service import BIN, children, environment, free_port, get_json, start, stop, wait_ready
from server import create_app
from server.state import get_state


def _serve(bundle: Path, port: int, db_url: str, log: Path | None = None) -> subprocess.Popen:
    """`recsys serve` (gunicorn, 2 workers); its access log (stdout) goes to `log` if given."""
    env = environment(RECSYS_API_KEYS=KEY, RECSYS_FEEDBACK_DB_URL=db_url)
    return start([str(BIN / "recsys"), "serve", "--bundle", str(bundle), "--port", str(port), "--workers", "2"],
                 env, log=log)


def test_gunicorn_smoke_and_acknowledged_feedback_survives_a_kill(models_root, tmp_path):
    """A real gunicorn (2 workers) on 127.0.0.1 via `recsys serve`. After a 201 for a feedback event the
    whole process group is SIGKILLed; after a restart the event is there and shapes the recommendations."""
    port, db = free_port(), f"sqlite:///{tmp_path / 'fb.db'}"
    proc = _serve(models_root, port, db)
    try:
        wait_ready(proc, port)
        for _ in range(20):
            status, body = get_json(port, "/v1/users/u0001/recommendations?k=3")
            assert status == 200 and len(body["items"]) == 3
        line = 'recsys_requests_total{endpoint="/v1/users/<string:user_id>/recommendations",method="GET",status="200"}'
        for _ in range(4):  # whichever worker answers, the count covers both
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            assert f"{line} 20.0" in text, [t for t in text.splitlines() if "recommendations" in t]
            assert "recsys_request_seconds_bucket" in text and "recsys_model_info" in text
        assert get_json(port, "/v1/users/walk-in/recommendations?k=3")[1]["fallback"] is True
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/feedback", method="POST", headers={**AUTH, "Content-Type": "application/json"},
            data=json.dumps(events(("walk-in", "i0001"), event_id="crash-1")).encode())
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 201
        stop(proc, signal.SIGKILL)  # right after the acknowledgement: no graceful shutdown
    finally:
        if proc.poll() is None:
            stop(proc)
    from recsys.feedback import FeedbackStore

    assert FeedbackStore(db).history("walk-in") == [("i0001", 1.0)]
    proc = _serve(models_root, port, db)
    try:
        wait_ready(proc, port)
        assert get_json(port, "/v1/users/walk-in/recommendations?k=3")[1]["fallback"] is False
    finally:
        stop(proc)


def test_sighup_reload_under_load_drops_nothing(own_root, tmp_path):
    """A bounded client loop on 127.0.0.1 keeps requesting while a new bundle is published and the master
    gets SIGHUP: zero failed requests, and the new version is served afterwards."""
    import threading

    root, model = own_root
    port = free_port()
    proc = _serve(root, port, f"sqlite:///{tmp_path / 'fb.db'}")
    failures, versions, done = [], set(), threading.Event()

    def client_loop() -> None:
        for _ in range(2000):
            if done.is_set():
                return
            try:
                status, body = get_json(port, "/v1/users/u0001/recommendations?k=5")
                versions.add(body["model_version"])
                if status != 200 or len(body["items"]) != 5:
                    failures.append(status)
            except Exception as e:  # noqa: BLE001 - any failure counts
                failures.append(repr(e))

    try:
        wait_ready(proc, port)
        threads = [threading.Thread(target=client_loop) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        second = model.save(new_version_path(root, "second"))
        publish(root, second)
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while get_json(port, "/v1/model")[1]["version"] != second.name:
            assert time.monotonic() < deadline, "the new bundle was not served within 30 s"
            time.sleep(0.2)
        time.sleep(1.0)
        done.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        done.set()
        stop(proc)
    assert failures == []
    assert second.name in versions and len(versions) == 2


def _until_every_worker_answers(port: int, path: str, log: Path, workers: set[str], check) -> None:
    """GET `path` (a new connection each time) until each pid of `workers` has answered it (by the access log
    lines written since the call), asserting `check(body)` of every answer; 30 s at most."""
    start, deadline, seen = len(log.read_text().splitlines()), time.monotonic() + 30, set()
    while not workers <= seen:
        status, body = get_json(port, path)
        assert status == 200 and check(body), body
        lines = [json.loads(line) for line in log.read_text().splitlines()[start:] if line.startswith("{")]
        seen = {line["worker"].strip("<>") for line in lines if path in line["request"]}
        assert time.monotonic() < deadline, f"only {seen} of {workers} answered in 30 s"


def _workers(proc: subprocess.Popen) -> set[str]:
    """The master's worker pids, as the access log writes them."""
    return {str(pid) for pid in children(proc.pid)}


@contextlib.contextmanager
def _serving(root: Path, tmp_path: Path):
    """`recsys serve` on `root` with its access log, ready with both workers: (process, port, log, served
    version, worker pids); stopped on the way out."""
    port, log = free_port(), tmp_path / "access.log"
    proc = _serve(root, port, f"sqlite:///{tmp_path / 'fb.db'}", log=log)
    try:
        wait_ready(proc, port, workers=2)
        yield proc, port, log, get_json(port, "/v1/model")[1]["version"], _workers(proc)
    finally:
        stop(proc)


def _new_workers(proc: subprocess.Popen, old: set[str]) -> set[str]:
    """The master's workers once none of `old` is left and two new ones run (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        now = _workers(proc)
        if len(now) >= 2 and not now & old:
            return now
        assert time.monotonic() < deadline, f"workers {now} after 30 s, old ones {old}"
        time.sleep(0.1)


def test_feedback_reaches_every_gunicorn_worker_at_once(models_root, tmp_path):
    """Both workers of a real gunicorn have answered (and cached) a user's fallback recommendations; after one
    feedback event, every answer from either worker is folded in. The access log names the worker."""
    path = "/v1/users/drifter/recommendations?k=5"
    with _serving(models_root, tmp_path) as (_, port, log, _, workers):
        _until_every_worker_answers(port, path, log, workers, lambda body: body["fallback"] is True)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/feedback", method="POST", headers={**AUTH, "Content-Type": "application/json"},
            data=json.dumps(events(("drifter", "i0001"))).encode())
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 201
        _until_every_worker_answers(port, path, log, workers, lambda body: body["fallback"] is False)


def test_admin_reload_under_gunicorn_replaces_every_worker(own_root, tmp_path):
    """POST /v1/admin/reload to one worker of a real gunicorn: the master reloads (SIGHUP), every old worker is
    replaced, and each new worker serves the new version."""
    root, model = own_root
    with _serving(root, tmp_path) as (proc, port, log, first, old):
        second = model.save(new_version_path(root, "second"))
        publish(root, second)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/admin/reload", method="POST", headers=AUTH)
        with urllib.request.urlopen(request, timeout=30) as r:
            assert json.loads(r.read()) == {"version": second.name, "previous": first, "workers_restarting": True}
        _until_every_worker_answers(port, "/v1/users/u0001/recommendations?k=3", log, _new_workers(proc, old),
                                    lambda body: body["model_version"] == second.name)


def test_sighup_with_a_corrupt_bundle_keeps_the_old_model_in_every_new_worker(own_root, tmp_path):
    """`current` points at a bundle corrupted after publishing; SIGHUP: the master refuses it (checksums), the
    workers are still replaced, and every new one serves the old version."""
    root, model = own_root
    with _serving(root, tmp_path) as (proc, port, log, first, old):
        broken = model.save(new_version_path(root, "broken"))
        publish(root, broken)
        (broken / "items.json").write_text("[]")
        os.kill(proc.pid, signal.SIGHUP)
        _until_every_worker_answers(port, "/v1/users/u0001/recommendations?k=3", log, _new_workers(proc, old),
                                    lambda body: body["model_version"] == first and len(body["items"]) == 3)
        assert proc.poll() is None, "the master survived"


def test_gunicorn_hooks_freeze_the_preloaded_app_and_reload_unfreezes(models_root, monkeypatch):
    """pre_fork moves the preloaded objects out of the garbage collector's reach (a full collection over the
    loaded model stalled a worker for 0.2-0.6 s under load); on_reload unfreezes so the old model can go."""
    import gc
    from types import SimpleNamespace

    import server.metrics  # prometheus_client picks its value class when first imported: before the
    #                      config sets PROMETHEUS_MULTIPROC_DIR, or later tests' metrics would need that dir
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the config sets defaults in the environment
    conf = Path(__file__).resolve().parents[1] / "server" / "gunicorn.conf.py"
    hooks: dict = {"__file__": str(conf)}
    exec(compile(conf.read_text(), str(conf), "exec"), hooks)  # noqa: S102 - the repository's own file
    app = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://"})
    server = SimpleNamespace(app=SimpleNamespace(wsgi=lambda: app), log=SimpleNamespace(error=print))
    try:
        hooks["pre_fork"](server, None)
        assert gc.get_freeze_count() > 0
        before = get_state(app).current
        hooks["on_reload"](server)
        assert gc.get_freeze_count() == 0 and get_state(app).current is not before
    finally:
        gc.unfreeze()


def test_gunicorn_settings_default_to_two_workers_per_cpu_of_two_threads(monkeypatch):
    """Without RECSYS_WORKERS / RECSYS_THREADS, the service's gunicorn settings start two workers per usable CPU,
    two threads each (one worker per core could take most keep-alive connections and run alone under its GIL)."""
    import os
    from pathlib import Path

    # the config setdefault()s BLAS and Prometheus variables: a copy of the environment keeps them from this process
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in ("RECSYS_WORKERS",
                                                                                        "RECSYS_THREADS")})
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = "/nonexistent"
    conf = Path(__file__).resolve().parents[1] / "server" / "gunicorn.conf.py"
    settings: dict = {"__file__": str(conf)}
    exec(compile(conf.read_text(), str(conf), "exec"), settings)  # noqa: S102 - the repository's own file
    assert settings["workers"] == 2 * len(os.sched_getaffinity(0)) and settings["threads"] == 2
    assert settings["worker_class"] == "server.worker.BalancedThreadWorker"
    os.environ["RECSYS_WORKERS"] = "3"
    exec(compile(conf.read_text(), str(conf), "exec"), settings)  # noqa: S102
    assert settings["workers"] == 3


def test_the_worker_accepts_new_connections_only_while_a_thread_is_free():
    """server.worker.BalancedThreadWorker, driven as gunicorn's loop drives it (a real listening socket and
    selector): it listens while fewer requests are in its pool than it has threads, stops when they are
    all busy (a new connection goes to another worker), and listens again when one finishes; a new
    connection that has sent nothing waits in the poller, not in a thread; a stopping worker never listens
    again. The config names it (test_gunicorn_settings_...)."""
    import selectors
    import socket
    from concurrent.futures import Future
    from unittest import mock

    from gunicorn.config import Config
    from gunicorn.workers.gthread import TConn

    from server.worker import BalancedThreadWorker

    cfg = Config()
    cfg.set("threads", 2)
    listener = socket.create_server(("127.0.0.1", 0))
    worker = BalancedThreadWorker(1, os.getpid(), [listener], None, 30, cfg, mock.Mock())
    worker.in_pool, worker.poller = 0, selectors.DefaultSelector()
    worker.tpool, worker.method_queue = mock.Mock(), mock.Mock()

    def registered(fileobj) -> bool:
        return any(key.fileobj is fileobj for key in worker.poller.get_map().values())

    def done(result) -> Future:
        future = Future()
        future.set_result(result)
        return future

    worker.set_accept_enabled(True)
    assert registered(listener)
    first, second = mock.Mock(initialized=True), mock.Mock(initialized=True)
    worker.nr_conns = 2
    worker.enqueue_req(first)
    assert registered(listener), "one thread of two is still free"
    worker.enqueue_req(second)
    assert not registered(listener) and worker.in_pool == 2 and worker.tpool.submit.call_count == 2
    worker.set_accept_enabled(True)  # what the loop asks on every turn while nr_conns < worker_connections
    assert not registered(listener)
    worker.finish_request(first, done(False))  # the first connection closes: a thread is free again
    assert registered(listener) and worker.in_pool == 1 and worker.nr_conns == 1
    first.close.assert_called_once()

    ours, theirs = socket.socketpair()  # a new connection whose client has sent nothing yet
    silent = mock.Mock(initialized=False, sock=ours, wait_for_data=lambda timeout: False)
    worker.enqueue_req(silent)
    assert worker.in_pool == 1 and worker.tpool.submit.call_count == 2, "no thread waits for its bytes"
    assert registered(ours) and list(worker.pending_conns) == [silent]
    mine, client = socket.socketpair()  # one whose client wrote right after connecting: straight to a thread
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    writer = TConn(cfg, mine, ("127.0.0.1", 1), listener.getsockname())
    worker.enqueue_req(writer)
    assert worker.in_pool == 2 and worker.tpool.submit.call_count == 3 and not registered(mine)
    client.close()
    worker.finish_request(writer, done(False))

    worker.alive = False  # stopping: run() has turned accepting off; a request that finishes now
    worker.set_accept_enabled(False)
    worker.finish_request(second, done(False))
    assert not registered(listener) and worker.in_pool == 0
    for s in (listener, ours, theirs):
        s.close()


def test_a_request_in_flight_finishes_on_the_model_it_started_with(own_root, tmp_path, monkeypatch):
    """A reload while a recommendation is being ranked: that answer comes from (and names) the model it started
    with; the next request gets the new one."""
    import threading

    root, model = own_root
    app = create_app({"BUNDLE": str(root), "API_KEYS": KEY, "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}"})
    client = app.test_client()
    old = get_state(app).current
    entered, release, answers = threading.Event(), threading.Event(), []
    original = old.engine.recommend_user

    def slow(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(old.engine, "recommend_user", slow)
    flight = threading.Thread(target=lambda: answers.append(
        client.get("/v1/users/u0001/recommendations?k=3").get_json()))
    flight.start()
    try:
        assert entered.wait(30)
        second = model.save(new_version_path(root, "second"))
        publish(root, second)
        assert client.post("/v1/admin/reload", headers=AUTH).get_json()["version"] == second.name
        assert client.get("/v1/users/u0002/recommendations?k=3").get_json()["model_version"] == second.name
    finally:
        release.set()
        flight.join(30)
    expected = original("u0001", 3)
    assert answers[0]["model_version"] == old.version != second.name
    assert [i["id"] for i in answers[0]["items"]] == expected.item_ids.tolist()


def test_a_feedback_event_is_committed_before_its_201_leaves_the_app(models_root, tmp_path):
    """The SIGKILL test above kills after a full round trip; this one looks at the database the moment the app
    starts its 201 (a WSGI wrapper, another connection): a commit moved after the response fails here."""
    import sqlite3

    db = tmp_path / "fb.db"
    app = create_app({"BUNDLE": str(models_root), "API_KEYS": KEY, "FEEDBACK_DB_URL": f"sqlite:///{db}"})
    inner, seen = app.wsgi_app, []

    def wsgi(environ, start_response):
        def start(status, headers, exc_info=None):
            if status.startswith("201"):
                with sqlite3.connect(db) as connection:
                    seen.append(connection.execute("SELECT user_id, item_id FROM feedback_events").fetchall())
            return start_response(status, headers, exc_info)
        return inner(environ, start)

    app.wsgi_app = wsgi
    assert app.test_client().post("/v1/feedback", json=events(("walk-in", "i0001")), headers=AUTH).status_code == 201
    assert seen == [[("walk-in", "i0001")]]
