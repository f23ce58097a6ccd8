"""benchmarks/serving.py's realistic traffic (--traffic zipf): the request sequence it sends."""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import serving


def test_zipf_traffic_draws_skewed_users_and_feedback_for_them(models_root, synthetic):
    args = argparse.Namespace(zipf_exponent=1.0, sequence=4000, feedback_share=0.05, seed=3, k=7)
    requests, facts = serving.zipf_requests(models_root, args)
    gets = [path for method, path, _ in requests if method == "GET"]
    posts = [json.loads(body)["events"][0] for method, _, body in requests if method == "POST"]
    assert len(requests) == 4000 and facts["feedback_posts"] == len(posts) and 120 < len(posts) < 290
    assert all(path.endswith("/recommendations?k=7") for path in gets)
    users = Counter(path.split("/")[3] for path in gets)
    assert set(users) <= set(synthetic.users.ids) and facts["distinct_users"] == len(users)
    top, = users.most_common(1)
    assert top[1] > 10 * len(gets) / len(synthetic.users.ids), "a Zipf law: some users come back far more often"
    assert {p["user"] for p in posts} <= set(synthetic.users.ids) and {p["item"] for p in posts} <= set(synthetic.items.ids)
    assert 0 < facts["after_feedback_share"] < facts["repeat_share"] < 1
    again, _ = serving.zipf_requests(models_root, args)
    assert again == requests, "seeded"


def test_cycle_traffic_is_every_movielens_user_in_turn():
    requests = serving.cycle_requests(10)
    assert [path for _, path, _ in requests[:2]] == ["/v1/users/1/recommendations?k=10",
                                                    "/v1/users/2/recommendations?k=10"]
    assert len(requests) == serving.N_USERS and {method for method, _, _ in requests} == {"GET"}


def test_session_traffic_posts_each_movielens_users_last_items_in_time_order():
    from recsys.data import read_interactions, user_histories
    from recsys.datasets import load_movielens

    requests = serving.session_requests(10)
    assert len(requests) == serving.N_USERS and {m for m, _, _ in requests} == {"POST"}
    inter = read_interactions(load_movielens().interactions, time_col="timestamp")
    indptr, items = user_histories(inter)
    first = json.loads(requests[0][2])
    assert requests[0][1] == "/v1/sessions/recommendations" and first["k"] == 10
    assert first["items"] == inter.items.ids[items[indptr[0]:indptr[1]][-10:]].tolist()
    assert " " not in requests[0][2], "one line of the traffic file: method, path, body"


def test_the_explained_endpoint_sends_the_same_gets_with_explain_and_the_posts_as_they_are():
    args = argparse.Namespace(requests=[("GET", "/v1/users/1/recommendations?k=10", ""),
                                        ("POST", "/v1/feedback", '{"events": []}')])
    assert serving.requests_for(args, "recommendations") is args.requests
    assert serving.requests_for(args, "explained") == [("GET", "/v1/users/1/recommendations?k=10&explain=true", ""),
                                                       ("POST", "/v1/feedback", '{"events": []}')]


def test_scoring_benchmark_times_every_kernel_on_a_bundle(models_root, capsys):
    """benchmarks/scoring.py on a small trained bundle: every kernel timed, ratios against the old ones."""
    import scoring

    assert scoring.main(["--bundle", str(models_root), "--calls", "3", "--rounds", "2", "--filler-us", "0",
                         "--sizes", "40"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(lines) == 16 and all(line.rstrip().endswith("x") for line in lines)
    assert "q @ item_columns" in out and "16 queries in one GEMM" in out and "grouped maxima" in out and "Cholesky" in out
    assert "top-k, 40 items: int8 first pass (Int8Items)" in out and "float32 (column product + top-k)" in out


def test_exact_scan_benchmark_compares_float32_and_int8_on_both_norm_profiles(capsys):
    """benchmarks/exact_scan.py, small: both profiles timed, and the int8 answers are the float32 answers."""
    import exact_scan

    assert exact_scan.main(["--items", "3000", "--dim", "32", "--queries", "3", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("same answers: True") == 2 and "MF-like" in out and "iALS-like" in out
