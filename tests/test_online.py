"""What the service served, recorded off the request path (server.recording), and the online metrics computed
from it and the events that followed (recsys.online, `recsys report`)."""
from __future__ import annotations

import time

import pytest
from server_support import AUTH, KEY

from recsys.cli import main
from recsys.exceptions import DataValidationError
from recsys.feedback import Event, FeedbackStore, Served
from recsys.online import online_report
from server import create_app
from server.recording import RECORDER, Recorder


@pytest.fixture()
def recorded(models_root, tmp_path):
    app = create_app({"BUNDLE": str(models_root), "API_KEYS": KEY, "RECORD_RATE": 1.0,
                      "RECORD_FLUSH_SECONDS": 3600.0, "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}"})
    return app.test_client(), app.extensions[RECORDER]


def test_every_answer_gets_a_request_id_and_a_recorded_share_is_stored(recorded, synthetic):
    client, recorder = recorded
    user = synthetic.users.ids[3]
    first = client.get(f"/v1/users/{user}/recommendations?k=4")
    second = client.get(f"/v1/users/{user}/recommendations?k=4", headers={"X-Request-Id": "mine-1"})  # cached
    stranger = client.get("/v1/users/stranger/recommendations?k=3")
    assert len(first.headers["X-Request-Id"]) == 32 and second.headers["X-Request-Id"] == "mine-1"
    assert recorder.flush() == 3 and recorder.flush() == 0
    frame = recorder.store.served_frame()
    assert list(frame["request_id"]) == [first.headers["X-Request-Id"], "mine-1", stranger.headers["X-Request-Id"]]
    assert frame["items"][0] == [i["id"] for i in first.get_json()["items"]] == frame["items"][1]
    assert list(frame["fallback"]) == [False, False, True] and list(frame["user"]) == [user, user, "stranger"]
    assert set(frame["model_version"]) == {first.get_json()["model_version"]}


def test_recording_samples_never_blocks_and_writes_from_its_own_thread(tmp_path, monkeypatch):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    body = b'{"fallback": false, "items": [{"id": "a"}], "model_version": "v1", "user": "u"}'
    off = Recorder(store, 0.0)
    off.offer("r0", "u", body)
    assert off.queue.qsize() == 0, "rate 0 records nothing"
    monkeypatch.setattr("random.random", iter([0.2, 0.7, 0.4]).__next__)
    half = Recorder(store, 0.5, flush_seconds=3600)
    for n in range(3):
        half.offer(f"r{n}", "u", body)
    assert half.queue.qsize() == 2, "the draws under 0.5 are kept"
    full = Recorder(store, 1.0, flush_seconds=3600, max_queue=1)
    started = time.perf_counter()
    for n in range(50):
        full.offer(f"f{n}", "u", body)
    assert full.queue.qsize() == 1 and time.perf_counter() - started < 0.5, "a full queue drops, never waits"
    threaded = Recorder(store, 1.0, flush_seconds=0.05)
    threaded.offer("t1", "u", body)
    deadline = time.time() + 10
    while "t1" not in set(store.served_frame()["request_id"]) and time.time() < deadline:
        time.sleep(0.05)
    assert "t1" in set(store.served_frame()["request_id"]), "the worker's thread stored it"


def test_feedback_events_can_name_the_answer_they_respond_to(recorded, synthetic):
    client, recorder = recorded
    answer = client.get("/v1/users/newcomer/recommendations?k=3")
    request_id = answer.headers["X-Request-Id"]
    item = answer.get_json()["items"][1]["id"]
    posted = client.post("/v1/feedback", headers=AUTH,
                         json={"events": [{"user": "newcomer", "item": item, "request_id": request_id}]})
    assert posted.status_code == 201
    recorder.flush()
    assert recorder.store.to_frame()["request_id"].tolist() == [request_id]
    row = online_report(recorder.store).iloc[0]
    assert row["lists"] == 1 and row["hit_rate"] == 1 and row["attributed_share"] == 1 and row["fallback_share"] == 1
    assert row["ndcg"] == pytest.approx(1 / 1.584962500721156), "the relevant item at the second position"


def test_online_metrics_judge_a_list_by_its_users_later_events_within_the_horizon(tmp_path, capsys):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    t = 1_000_000.0
    store.add_served([Served("a", "u1", "v1", ("x", "y", "z"), False, t),
                      Served("b", "u2", "v1", ("x", "y"), False, t),
                      Served("c", "u1", "v2", ("z", "w"), True, t, variant="B")])
    store.add([Event("u1", "y", timestamp=t + 60),         # after list a (and c): a hit at position 2
               Event("u2", "x", timestamp=t - 60),         # before list b: not a response to it
               Event("u2", "y", timestamp=t + 30 * 86400)])  # a month later: past the week's horizon
    table = online_report(store).set_index("model_version")
    assert table.loc["v1", "lists"] == 2 and table.loc["v1", "users"] == 2 and table.loc["v1", "hit_rate"] == 0.5
    assert table.loc["v1", "ndcg"] == pytest.approx(0.5 / 1.584962500721156) and table.loc["v1", "coverage"] == 3
    assert table.loc["v2", "variant"] == "B" and table.loc["v2", "hit_rate"] == 0 and table.loc["v2", "fallback_share"] == 1
    assert online_report(store, since=t + 1).empty
    assert main(["report", "--db", f"sqlite:///{tmp_path / 'fb.db'}"]) == 0
    out = capsys.readouterr().out
    assert "hit_rate" in out and "v1" in out and "v2" in out
    assert main(["report", "--db", f"sqlite:///{tmp_path / 'fb.db'}", "--since", "yesterday"]) == 2


def test_prometheus_counts_answers_by_kind_short_filtered_answers_and_feedback_events(recorded, synthetic):
    from prometheus_client import REGISTRY

    def value(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    client, _ = recorded
    user = synthetic.users.ids[5]
    before = {k: value("recsys_answers_total", kind=k) for k in ("model", "fallback", "fold-in")}
    emptied, events = value("recsys_filter_emptied_total"), value("recsys_feedback_events_total")
    client.get(f"/v1/users/{user}/recommendations?k=3")
    client.get(f"/v1/users/{user}/recommendations?k=3")  # from the cache: still a model answer
    client.get("/v1/users/stranger/recommendations?k=3")
    client.post("/v1/feedback", headers=AUTH, json={"events": [{"user": "fan", "item": synthetic.items.ids[0]},
                                                              {"user": "fan", "item": synthetic.items.ids[1]}]})
    client.get("/v1/users/fan/recommendations?k=3")
    client.get(f"/v1/users/{user}/recommendations?k=50&filter=genres:cluster1")  # fewer than 50 such items
    after = {k: value("recsys_answers_total", kind=k) for k in before}
    assert {k: after[k] - before[k] for k in before} == {"model": 3, "fallback": 1, "fold-in": 1}
    assert value("recsys_filter_emptied_total") - emptied == 1
    assert value("recsys_feedback_events_total") - events == 2


def test_a_variant_whose_lists_hold_the_next_item_more_often_is_named_the_winner(tmp_path, capsys):
    """A simulated A/B stream: 400 users a variant each; B's list holds the user's next item 35 % of the time, A's
    20 %. The comparison's interval excludes zero, and a stream where both hold it 20 % of the time does not."""
    import numpy as np

    def stream(path, rate_b: float) -> FeedbackStore:
        store = FeedbackStore(f"sqlite:///{path}")
        rng = np.random.default_rng(1)
        served, events = [], []
        for u in range(400):
            variant = "AB"[u % 2]
            nxt = f"i{rng.integers(1000)}"
            hit = rng.random() < (rate_b if variant == "B" else 0.2)
            items = (nxt, "x1", "x2") if hit else ("x1", "x2", "x3")
            served.append(Served(f"r{u}", f"u{u}", "v-" + variant, items, False, 1000.0, variant))
            events.append(Event(f"u{u}", nxt, timestamp=2000.0))
        store.add_served(served)
        store.add(events)
        return store

    from recsys.online import compare_variants

    row = compare_variants(stream(tmp_path / "ab.db", 0.35)).iloc[0]
    assert row["variant"] == "B" and row["difference"] == pytest.approx(row["value"] - row["baseline_value"])
    assert 0 < row["low"] < row["difference"] < row["high"], row
    assert main(["report", "--db", f"sqlite:///{tmp_path / 'ab.db'}"]) == 0
    assert "Variant B - A, hit rate: +0.1" in capsys.readouterr().out
    same = compare_variants(stream(tmp_path / "aa.db", 0.2)).iloc[0]
    assert same["low"] < 0 < same["high"]
    with pytest.raises(DataValidationError, match=r"No served lists of variant 'C'"):
        compare_variants(stream(tmp_path / "c.db", 0.2), baseline="C")
