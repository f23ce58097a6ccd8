"""A/B serving: a second bundle (RECSYS_BUNDLE_B) answers a fixed share of users, each user always the same
variant; answers name it, both variants reload, and recorded answers report per variant."""
from __future__ import annotations

import pytest
from server_support import AUTH, KEY

from recsys.bundle import new_version_path, publish
from recsys.models import Popularity
from recsys.online import online_report
from server import create_app
from server.recording import RECORDER
from server.state import variant_of


@pytest.fixture()
def ab(models_root, synthetic, tmp_path):
    root_b = tmp_path / "models_b"
    publish(root_b, Popularity().fit(synthetic).save(new_version_path(root_b, "popularity")))
    app = create_app({"BUNDLE": str(models_root), "BUNDLE_B": str(root_b), "AB_SHARE": 0.5, "AB_SALT": "s1",
                      "API_KEYS": KEY, "RECORD_RATE": 1.0, "RECORD_FLUSH_SECONDS": 3600.0,
                      "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}"})
    return app, root_b


def test_each_user_gets_one_variant_named_in_every_answer(ab, synthetic):
    app, _ = ab
    client = app.test_client()
    users = list(synthetic.users.ids[:40])
    versions = {}
    for user in users:
        first = client.get(f"/v1/users/{user}/recommendations?k=3").get_json()
        again = client.get(f"/v1/users/{user}/recommendations?k=3").get_json()  # from the variant's cache
        explained = client.get(f"/v1/users/{user}/recommendations?k=3&explain=true").get_json()
        assert first == again and first["variant"] == explained["variant"] == variant_of(user, 0.5, "s1")
        versions.setdefault(first["variant"], set()).add(first["model_version"])
    assert 10 <= sum(variant_of(u, 0.5, "s1") == "B" for u in users) <= 30
    assert versions["A"] != versions["B"] and all(len(v) == 1 for v in versions.values())
    assert next(iter(versions["B"])).endswith("popularity")
    assert variant_of(users[0], 0.5, "s1") == variant_of(users[0], 0.5, "s1")
    assert [variant_of(u, 0.0, "s1") for u in users] == ["A"] * 40 and [variant_of(u, 1.0, "x") for u in users] == ["B"] * 40
    ready = client.get("/readyz").get_json()
    assert ready["model_version_b"] == next(iter(versions["B"]))
    served = client.get("/metrics").get_data(as_text=True)
    assert all(f'recsys_model_info{{version="{next(iter(v))}"}} 1.0' in served for v in versions.values())
    app.extensions[RECORDER].flush()
    report = online_report(app.extensions[RECORDER].store)
    assert sorted(report["variant"]) == ["A", "B"] and report["lists"].sum() == 120


def test_reload_swaps_both_variants(ab, synthetic):
    app, root_b = ab
    client = app.test_client()
    user = next(u for u in synthetic.users.ids if variant_of(u, 0.5, "s1") == "B")
    before = client.get(f"/v1/users/{user}/recommendations?k=2").get_json()["model_version"]
    newer = Popularity(use_weights=True).fit(synthetic).save(new_version_path(root_b, "pop2"))
    publish(root_b, newer)
    assert client.post("/v1/admin/reload", headers=AUTH).status_code == 200
    after = client.get(f"/v1/users/{user}/recommendations?k=2").get_json()["model_version"]
    assert before != after == newer.name


def test_a_batch_answers_each_user_by_their_variant(ab, synthetic):
    app, _ = ab
    client = app.test_client()
    users = [*synthetic.users.ids[:12], "stranger"]
    results = client.post("/v1/recommendations/batch", json={"users": users, "k": 3}).get_json()["results"]
    assert [r["variant"] for r in results] == [variant_of(u, 0.5, "s1") for u in users]
    for user, result in zip(users, results):  # (a batch scores in float32 BLAS: the same items, scores to rounding)
        single = client.get(f"/v1/users/{user}/recommendations?k=3").get_json()
        assert [i["id"] for i in result["items"]] == [i["id"] for i in single["items"]]
        assert [i["score"] for i in result["items"]] == pytest.approx([i["score"] for i in single["items"]], rel=1e-5)
        assert result["model_version"] == single["model_version"]
