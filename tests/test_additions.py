"""recsys.additions: items added to a served model without retraining, placed by each model's own rule and
recommended at once (library, REST across two app instances, CLI)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from server_support import AUTH, KEY

from recsys.additions import NewItem, add_items, item_vectors
from recsys.bundle import read_bundle, resolve
from recsys.cli import main
from recsys.data import from_arrays
from recsys.engine import load_engine
from recsys.exceptions import DataValidationError
from recsys.models import make_model
from server import create_app

# few factors: on a log of two tastes, a model with many memorises each user's four items, and an item with ten
# buyers then fits those ten users alone
FAST = {"ials": {"factors": 4, "epochs": 8}, "mf": {"factors": 4, "epochs": 20},
        "two_tower": {"factors": 4, "epochs": 10}, "ease": {"l2": 10.0}}
TORCH = {"progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def planted():
    """Two tastes that never mix: every user takes four of the eight 'a' items or four of the eight 'b' items;
    the items' category says which."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(300):
        group = "ab"[u % 2]
        for i in rng.choice(8, 4, replace=False):
            users.append(f"u{u}")
            items.append(f"{group}{i}")
    ids = sorted(set(items))
    names = {"a": "group alpha", "b": "group beta"}  # (words of one letter are not tokens)
    meta = pd.DataFrame({"item": ids, "category": [names[i[0]] for i in ids], "price": np.arange(len(ids))})
    return from_arrays(np.array(users), np.array(items), item_metadata=meta)


def fitted(name: str, planted):
    return make_model(name, **FAST[name], **(TORCH if name != "ease" else {})).fit(planted)


BUYERS = [(f"u{u}", 1.0) for u in range(0, 20, 2)]  # ten 'a' users


@pytest.mark.parametrize("name, rule", [("ials", "fold-in"), ("mf", "fold-in"), ("two_tower", "fold-in"),
                                        ("ease", "neighbours")])
def test_an_item_added_with_interactions_is_recommended_to_users_of_its_buyers_taste(planted, name, rule):
    engine = fitted(name, planted).engine_
    new = [NewItem("a-new", {"category": "group alpha"}, BUYERS)]
    assert item_vectors(engine, new)[1] == [rule]
    extended = add_items(engine, new)
    assert extended.n_items == engine.n_items + 1 and "a-new" in extended.items
    a_user, b_user = "u100", "u101"  # not among the buyers
    assert "a-new" in extended.recommend_user(a_user, k=5).item_ids, "four unseen 'a' items and the new one"
    assert "a-new" not in extended.recommend_user(b_user, k=4).item_ids
    assert extended.catalogue.record("a-new")["category"] == "group alpha"
    np.testing.assert_array_equal(extended.item_vectors[:engine.n_items], engine.item_vectors)


@pytest.mark.parametrize("name", ["ials", "mf", "two_tower"])
def test_an_item_added_with_text_only_lands_among_the_items_its_text_describes(planted, name):
    engine = fitted(name, planted).engine_
    new = [NewItem("b-text", {"category": "group beta", "price": 3})]
    assert item_vectors(engine, new)[1] == ["item tower" if name == "two_tower" else "content"]
    extended = add_items(engine, new)
    unit = extended.similarity_vectors  # (cosine)
    to_new = unit[:engine.n_items] @ unit[-1]
    group = np.array([i[0] for i in engine.items.ids])
    assert to_new[group == "b"].mean() > to_new[group == "a"].mean() + 0.3, to_new.round(2)


def test_the_item_tower_places_a_new_item_as_training_placed_one_without_interactions(planted, tmp_path):
    """A catalogue item with no interactions got its vector from its features alone in training: the bundle's
    item tower, loaded without torch, gives the same vector to a new item with the same attributes."""
    meta = planted.item_metadata
    cold = pd.DataFrame({"item": ["b-cold"], "category": ["group beta"], "price": [3]})
    with_cold = from_arrays(np.array(planted.users.ids[planted.matrix().tocoo().row]),
                            np.array(planted.items.ids[planted.matrix().tocoo().col]),
                            item_metadata=pd.concat([meta, cold], ignore_index=True), catalog="metadata")
    model = fitted("two_tower", with_cold)
    trained = model.engine_.item_vectors[model.items_.to_index(["b-cold"])[0]]
    loaded = load_engine(model.save(tmp_path / "bundle"))[0]
    assert loaded.item_tower is not None and loaded.item_tower.weights.shape[1] == 4
    placed, rules = item_vectors(loaded, [NewItem("b-new", {"category": "group beta", "price": 3})])
    assert rules == ["item tower"]
    np.testing.assert_allclose(placed[0], trained, atol=1e-5)
    with pytest.raises(DataValidationError, match=r"none of the attributes its item tower reads: .*\['category'"):
        item_vectors(loaded, [NewItem("bare", {})])


def test_what_cannot_be_added_is_refused_by_name(planted):
    engine = fitted("ials", planted).engine_
    with pytest.raises(DataValidationError, match=r"\['a1'\] are already in the model"):
        add_items(engine, [NewItem("a1", {}, BUYERS)])
    with pytest.raises(DataValidationError, match=r"\['bare'\] have no interactions .* attributes among \['category'\]"):
        add_items(engine, [NewItem("bare", {"price": 3}, [("stranger", 1.0)])])
    with pytest.raises(DataValidationError, match=r"'x': unknown attribute\(s\) \['colour'\]; the model's items have "
                                                 r"\['category', 'price'\]"):
        add_items(engine, [NewItem("x", {"colour": "red"}, BUYERS)])
    with pytest.raises(DataValidationError, match="appear once"):
        add_items(engine, [NewItem("x", {}, BUYERS), NewItem("x", {}, BUYERS)])


@pytest.fixture
def served(planted, tmp_path):
    """One bundle and one feedback database behind two app instances (as two services would share them)."""
    root = tmp_path / "models"
    fitted("ials", planted).save(root / "v1")
    (root / "current").symlink_to("v1")
    config = {"BUNDLE": str(root), "API_KEYS": [KEY], "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}",
              "ADDITIONS_POLL_SECONDS": 0.0}
    return root, create_app(config).test_client(), create_app(config).test_client()


def test_an_item_posted_to_one_instance_is_recommended_by_the_other_without_retraining(served):
    _, first, second = served
    assert "a-new" not in [i["id"] for i in second.get("/v1/users/u100/recommendations?k=5").json["items"]]
    body = {"items": [{"id": "a-new", "attributes": {"category": "group alpha"},
                       "interactions": [{"user": u, "weight": w} for u, w in BUYERS]},
                      {"id": "b-text", "attributes": {"category": "group beta"}}]}
    assert first.post("/v1/items", json=body).status_code == 401, "writes need the API key"
    answer = first.post("/v1/items", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.json
    assert answer.json["stored"] == 2 and answer.json["rules"] == {"a-new": "fold-in", "b-text": "content"}
    for client in (first, second):
        assert "a-new" in [i["id"] for i in client.get("/v1/users/u100/recommendations?k=5").json["items"]]
        assert client.get("/v1/items/b-text").json["attributes"]["category"] == "group beta"
    again = second.post("/v1/items", json=body, headers=AUTH)
    assert again.status_code == 409 and "already in the model" in again.json["detail"]
    bare = first.post("/v1/items", json={"items": [{"id": "bare"}]}, headers=AUTH)
    assert bare.status_code == 409 and "bare" in bare.json["detail"]


def test_add_items_writes_and_publishes_a_new_version_and_leaves_the_old_one(served, tmp_path):
    root, _, _ = served
    old = resolve(root)
    (tmp_path / "new.csv").write_text("sku,category\na-new,group alpha\nb-text,group beta\n")
    (tmp_path / "events.csv").write_text("customer,sku\n" + "".join(f"{u},a-new\n" for u, _ in BUYERS))
    assert main(["add-items", "--bundle", str(root), "--items", str(tmp_path / "new.csv"), "--items-id-col", "sku",
                 "--data", str(tmp_path / "events.csv"), "--user-col", "customer", "--item-col", "sku"]) == 0
    new = resolve(root)
    assert new != old and read_bundle(old).manifest.n_items == 16
    bundle = read_bundle(new)
    assert bundle.manifest.n_items == 18 and bundle.manifest.data["added_items"] == ["a-new", "b-text"]
    from recsys.engine import load_engine
    engine, _ = load_engine(new)
    assert "a-new" in engine.recommend_user("u100", k=5).item_ids


def test_train_from_db_keeps_the_added_items_with_their_attributes(served, planted, tmp_path, capsys):
    _, first, _ = served
    body = {"items": [{"id": "a-new", "attributes": {"category": "group alpha"},
                       "interactions": [{"user": u, "weight": w} for u, w in BUYERS]}]}
    assert first.post("/v1/items", json=body, headers=AUTH).status_code == 201
    planted.to_frame()[["user", "item"]].to_csv(tmp_path / "log.csv", index=False)
    planted.item_metadata.to_csv(tmp_path / "items.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "log.csv"), "--items", str(tmp_path / "items.csv"),
                 "--from-db", f"sqlite:///{tmp_path / 'fb.db'}", "--model", "popularity", "--no-index",
                 "--out", str(tmp_path / "retrained")]) == 0
    meta = read_bundle(resolve(tmp_path / "retrained")).item_metadata.set_index("item")
    assert meta.loc["a-new", "category"] == "group alpha" and len(meta) == 17


def test_two_service_processes_serve_an_item_added_through_one_within_seconds(served, tmp_path):
    """Real processes (`recsys serve`, gunicorn) sharing one bundle and one database, the default poll."""
    import time

    from recsys.service import LocalService

    root, _, _ = served
    settings = {"FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}", "API_KEYS": KEY}
    body = {"items": [{"id": "a-new", "attributes": {"category": "group alpha"},
                       "interactions": [{"user": u, "weight": w} for u, w in BUYERS]}]}
    with LocalService(root, settings=settings) as first, LocalService(root, settings=settings) as second:
        assert first.post("/v1/items", body, AUTH)["rules"] == {"a-new": "fold-in"}
        added = time.monotonic()
        for service in (first, second):
            while "a-new" not in [i["id"] for i in service.get("/v1/users/u100/recommendations?k=5")["items"]]:
                assert time.monotonic() - added < 30, "not served within 30 s"
                time.sleep(0.2)
        assert time.monotonic() - added < 30


def test_a_stored_item_the_model_cannot_place_is_left_out_and_reported_once(served, tmp_path, caplog):
    """An item stored without interactions or text (as a retrained bundle without its columns would find it):
    the service keeps answering without it and says so once, not on every poll."""
    from recsys.feedback import FeedbackStore

    _, first, _ = served
    FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}").add_items([("ghost", {})])
    with caplog.at_level("ERROR", logger="recsys"):
        for _ in range(3):
            answer = first.get("/v1/users/u100/recommendations?k=20")
            assert answer.status_code == 200 and "ghost" not in [i["id"] for i in answer.json["items"]]
    assert [r.message for r in caplog.records].count(next(
        r.message for r in caplog.records if "Added items not served" in r.message)) == 1


def test_the_store_keeps_an_added_item_once_with_its_first_attributes(tmp_path):
    from recsys.feedback import FeedbackStore

    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    assert store.add_items([("x", {"category": "one"})]) == (1, 0)
    assert store.add_items([("x", {"category": "two"}), ("y", {})]) == (1, 1)
    assert [(i, a) for i, a, _ in store.added()] == [("x", {"category": "one"}), ("y", {})]
    assert store.last_added() == 2
