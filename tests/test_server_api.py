"""The REST service's endpoints through Flask's test client: answers, errors as problem+json, configuration,
limits, docs, metrics and the in-process reload. (Feedback: test_server_feedback.py; caches and the fast path:
test_server_cache.py; real gunicorn processes: test_server_process.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from server_support import AUTH, KEY, PROBLEM, events

from recsys.bundle import new_version_path, publish, resolve
from server import create_app
from server.state import get_feedback, get_state


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
    shutil.copytree(resolve(models_root), bad)
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


def test_a_batch_is_one_engine_call_and_one_feedback_read_with_each_users_own_answer(models_root, synthetic,
                                                                                   tmp_path, monkeypatch):
    """Known users without feedback are ranked in one batched search; a user with feedback is folded in and a
    stranger falls back, as the single endpoint answers each of them."""
    from server_support import count_calls

    app = create_app({"BUNDLE": str(models_root), "API_KEYS": KEY,
                      "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}"})
    client = app.test_client()
    users = [*synthetic.users.ids[:3], "walk-in", "stranger", synthetic.users.ids[0]]
    assert client.post("/v1/feedback", json=events(("walk-in", "i0001")), headers=AUTH).status_code == 201
    with app.app_context():
        engine, store = get_state().current.engine, get_feedback()
    searches = count_calls(monkeypatch, engine, "recommend_indices")
    reads, single_reads = count_calls(monkeypatch, store, "histories"), count_calls(monkeypatch, store, "history")
    results = client.post("/v1/recommendations/batch", json={"users": users, "k": 4}).get_json()["results"]
    assert len(searches) == 1 and len(reads) == 1 and single_reads == []
    assert [r["fallback"] for r in results] == [False, False, False, False, True, False]
    for user, result in zip(users, results):
        assert result == client.get(f"/v1/users/{user}/recommendations?k=4").get_json()


@pytest.fixture()
def shop_client(tmp_path):
    """The service on a retail-shaped bundle: SKUs with a category, a brand and a price."""
    import numpy as np
    import pandas as pd

    from recsys.data import read_interactions
    from recsys.models import Popularity

    rng = np.random.default_rng(0)
    skus = [f"SKU-{i:03d}" for i in range(40)]
    products = pd.DataFrame({"item": skus, "name": [f"product {i}" for i in range(40)],
                             "category": ["shoes" if i % 2 else "hats" for i in range(40)],
                             "brand": [("acme", "zeta", "omni")[i % 3] for i in range(40)],
                             "price": [10.0 + 5 * i for i in range(40)]})
    log = pd.DataFrame({"user": [f"c{u}" for u in rng.integers(0, 30, 600)], "item": rng.choice(skus, 600)})
    inter = read_interactions(log, item_metadata=products)
    root = tmp_path / "models"
    publish(root, Popularity().fit(inter).save(new_version_path(root, "shop")))
    app = create_app({"BUNDLE": str(root), "API_KEYS": KEY, "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}"})
    return app.test_client(), products.set_index("item")


def test_filters_on_any_attribute_through_every_endpoint(shop_client):
    client, products = shop_client
    url = "/v1/users/walk-in/recommendations?k=5&filter=category:shoes&filter=brand:acme,zeta&filter=price<=150"
    for _ in range(2):  # computed, then from the response cache
        items = [i["id"] for i in client.get(url).get_json()["items"]]
        assert len(items) == 5
        assert all(products.loc[i, "category"] == "shoes" and products.loc[i, "brand"] in ("acme", "zeta")
                   and products.loc[i, "price"] <= 150 for i in items), items
    unfiltered = client.get("/v1/users/walk-in/recommendations?k=5").get_json()["items"]
    assert [i["id"] for i in unfiltered] != items
    popular = client.get("/v1/items/popular?k=3&filter=price>=150").get_json()["items"]
    assert len(popular) == 3 and all(products.loc[i["id"], "price"] >= 150 for i in popular)
    batch = client.post("/v1/recommendations/batch", json={"users": ["c1", "walk-in"], "k": 3,
                                                           "filters": ["category:hats"]}).get_json()["results"]
    assert all(products.loc[i["id"], "category"] == "hats" for r in batch for i in r["items"])
    session = client.post("/v1/sessions/recommendations", json={"items": ["SKU-001"], "k": 3,
                                                                "filters": ["brand:omni"]}).get_json()["items"]
    assert session and all(products.loc[i["id"], "brand"] == "omni" for i in session)


def test_an_items_answer_has_every_column_of_the_bundle(shop_client, client):
    shop, _ = shop_client
    assert shop.get("/v1/items/SKU-003").get_json() == {
        "id": "SKU-003", "title": "product 3",  # the name column, recognised as the title
        "attributes": {"name": "product 3", "category": "shoes", "brand": "acme", "price": 25.0, "title": "product 3"}}
    recommended = shop.get("/v1/users/c1/recommendations?k=2").get_json()["items"]
    assert all(i["title"] == f"product {int(i['id'][4:])}" for i in recommended)
    movie = client.get("/v1/items/i0001").get_json()
    assert movie["attributes"]["title"] == movie["title"] == "Item i0001"
    assert movie["attributes"]["genres"] == movie["genres"]


def test_explain_adds_each_items_reasons_and_costs_nothing_without_it(client):
    plain = client.get("/v1/users/u0001/recommendations?k=3").get_json()
    explained = client.get("/v1/users/u0001/recommendations?k=3&explain=true").get_json()
    assert [i["id"] for i in explained["items"]] == [i["id"] for i in plain["items"]]
    assert explained["explanation"] == "fold-in", "an MF user's trained vector is not its fold-in"
    assert all(i["because"] and all(r["item"] for r in i["because"]) for i in explained["items"])
    assert "explanation" not in client.get("/v1/users/u0001/recommendations?k=3").get_json(), "not cached"
    stranger = client.get("/v1/users/stranger/recommendations?k=2&explain=true").get_json()
    assert stranger["explanation"] == "none" and [i["because"] for i in stranger["items"]] == [[], []]


FITS = ("does not fit this bundle's item attributes: write attribute:value (or value,value for any of several) on "
        "one of ['name', 'category', 'brand', 'price', 'title'], or attribute<=number / attribute>=number on one of "
        "['price'].")


@pytest.mark.parametrize("url, detail", [
    ("/v1/users/c1/recommendations?k=3&category=shoes",
     ("Unknown query parameter(s) ['category']. Available: ['exclude', 'explain', 'filter', 'genre', 'include_seen', "
     "'k', 'offset'].")),
    ("/v1/items/popular?colour=red", "Unknown query parameter(s) ['colour']. Available: ['filter', 'genre', 'k']."),
    ("/v1/users/c1/recommendations?filter=colour:red", f"Filter 'colour:red' {FITS}"),
    ("/v1/users/c1/recommendations?filter=price<=cheap", f"Filter 'price<=cheap' {FITS}"),
    ("/v1/users/c1/recommendations?filter=brand>=3", f"Filter 'brand>=3' {FITS}"),
    ("/v1/users/c1/recommendations?filter=shoes", f"Filter 'shoes' {FITS}"),
])
def test_an_unknown_parameter_or_attribute_is_a_422_naming_what_is_available(shop_client, url, detail):
    r = shop_client[0].get(url)
    assert r.status_code == 422 and r.content_type == PROBLEM
    assert detail in r.get_json()["detail"]


@pytest.mark.parametrize("method, url, body, status", [
    ("get", "/v1/users/u0001/recommendations?k=0", None, 422),
    ("get", "/v1/users/u0001/recommendations?k=abc", None, 422),
    ("get", "/v1/users/u0001/recommendations?k=900&offset=1001", None, 422),
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


def test_the_default_body_limit_is_one_mebibyte(client):
    body = b'{"users": ["' + b"u" * ((1 << 20) - 14) + b'"]}'  # 1 MiB + 1 byte
    assert len(body) == (1 << 20) + 1
    r = client.post("/v1/recommendations/batch", data=body, content_type="application/json")
    assert r.status_code == 413 and r.content_type == PROBLEM
    at_limit = body[:12] + body[13:]
    r = client.post("/v1/recommendations/batch", data=at_limit, content_type="application/json")
    assert len(at_limit) == 1 << 20 and r.status_code == 422, "a body of exactly the limit is read (and validated)"


def test_api_keys_are_compared_in_constant_time_against_every_key(models_root, monkeypatch):
    """Each presented key is compared with hmac.compare_digest against every configured key (an `==`, or a
    loop that stops at the first match, would fail this)."""
    import hmac

    from server import auth

    calls, compare = [], hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or compare(a, b))
    client = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://",
                         "API_KEYS": ["first-key", KEY, "third-key"]}).test_client()
    assert client.post("/v1/feedback", json=events(("u", "i0001")), headers=AUTH).status_code == 201
    assert sorted(b for _, b in calls) == sorted(k.encode() for k in ["first-key", KEY, "third-key"])
    calls.clear()
    assert client.post("/v1/feedback", json=events(("u", "i0001")), headers={"X-API-Key": "wrong"}).status_code == 403
    assert len(calls) == 3


def test_the_callers_service_settings_do_not_reach_the_tests(tmp_path):
    """With RECSYS_READ_REQUIRES_KEY=true in the environment, a test that reads without a key still passes
    (conftest clears the service settings)."""
    env = {**os.environ, "RECSYS_READ_REQUIRES_KEY": "true", "RECSYS_MAX_K": "3"}
    test = "tests/test_server_api.py::test_unknown_user_falls_back_to_popularity"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env,
                         capture_output=True, text=True, timeout=300, check=False, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stdout[-2000:]


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
    assert r.status_code == 422 and "less than or equal to 5." in r.get_json()["detail"]


def test_server_never_imports_torch_or_models(models_root):
    """Nor scikit-learn, which only an item added with text alone needs (a worker starts fast)."""
    config = repr({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://"})
    code = (f"import sys; from server import create_app; c = create_app({config}).test_client(); "
            "assert c.get('/v1/users/u0001/recommendations').status_code == 200; "
            "bad = [m for m in sys.modules if m in ('torch', 'sklearn') or m.startswith('recsys.models')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_reads_can_require_a_key(models_root):
    client = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://", "API_KEYS": KEY,
                         "READ_REQUIRES_KEY": True}).test_client()
    assert client.get("/v1/items/popular").status_code == 401
    assert client.get("/v1/items/popular", headers=AUTH).status_code == 200
    for _ in range(2):  # the plain-query fast path and its cached answer are behind the key too
        assert client.get("/v1/users/u0001/recommendations?k=3").status_code == 401
        assert client.get("/v1/users/u0001/recommendations?k=3", headers=AUTH).status_code == 200
    assert client.get("/livez").status_code == 200, "health stays open"


def test_admin_reload_swaps_and_refuses_a_corrupt_bundle(own_root, tmp_path):
    root, model = own_root
    client = create_app({"BUNDLE": str(root), "API_KEYS": KEY, "FEEDBACK_DB_URL": "sqlite://"}).test_client()
    first = client.get("/v1/model").get_json()["version"]
    assert client.post("/v1/admin/reload").status_code == 401
    second = model.save(new_version_path(root, "second"))
    publish(root, second)
    r = client.post("/v1/admin/reload", headers=AUTH).get_json()
    assert r == {"version": second.name, "previous": first, "workers_restarting": False}
    assert client.get("/v1/model").get_json()["version"] == second.name

    third = model.save(new_version_path(root, "third"))
    publish(root, third)
    (third / "items.json").write_text("[]")  # corrupted after publishing
    r = client.post("/v1/admin/reload", headers=AUTH)
    assert r.status_code == 409 and r.content_type == PROBLEM and "Checksum mismatch" in r.get_json()["detail"]
    assert client.get("/v1/model").get_json()["version"] == second.name, "the old model keeps serving"
    assert client.get("/v1/users/u0001/recommendations?k=3").status_code == 200


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
    assert r.status_code == 422 and r.get_json()["errors"]["json"]["users"] == ["Length must be between 1 and 2."]
    r = client.post("/v1/sessions/recommendations", json={"items": ["i0001", "i0002"]})
    assert r.status_code == 422 and r.get_json()["errors"]["json"]["items"] == ["Length must be between 1 and 1."]
    r = client.post("/v1/feedback", json=events(("u", "i"), ("u", "j")), headers=AUTH)
    assert r.status_code == 422 and r.get_json()["errors"]["json"]["events"] == ["Length must be between 1 and 1."]
    assert client.post("/v1/recommendations/batch", json={"users": ["a", "b"]}).status_code == 200


def test_a_raised_max_k_is_accepted_and_stated_in_the_spec(models_root, monkeypatch):
    monkeypatch.setenv("RECSYS_MAX_K", "5000")
    client = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://"}).test_client()
    assert client.get("/v1/users/u0001/recommendations?k=2000").status_code == 200, "the fast path"
    assert client.get("/v1/users/u0001/recommendations?k=2000&genre=cluster1").status_code == 200, "the full path"
    assert client.get("/v1/users/u0001/recommendations?k=5001").status_code == 422
    assert client.get("/v1/users/u0001/recommendations?k=4000&offset=5000").status_code == 200, \
        "each bound is stated and enforced on its own: no rule on k + offset the spec could not state"
    assert client.get("/v1/users/u0001/recommendations?offset=5001").status_code == 422
    params = {p["name"]: p for p in client.get("/openapi.json").get_json()["paths"]
              ["/v1/users/{user_id}/recommendations"]["get"]["parameters"]}
    assert params["k"]["schema"]["maximum"] == params["offset"]["schema"]["maximum"] == 5000
    default = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": "sqlite://", "MAX_K": 1000}).test_client()
    assert default.get("/v1/users/u0001/recommendations?k=2000").status_code == 422
    spec = default.get("/openapi.json").get_json()["paths"]["/v1/users/{user_id}/recommendations"]["get"]
    assert {p["name"]: p["schema"].get("maximum") for p in spec["parameters"]}["k"] == 1000
