"""The recommendations hot path (server/fastpath.py): the per-model response cache, the plain query-string
reader that skips webargs and the answer's JSON writer, all giving the same answers as the full path."""
from __future__ import annotations

import numpy as np
import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from server_support import AUTH, KEY, PROBLEM, count_calls, events

from recsys.bundle import new_version_path, publish
from server import create_app
from server.state import get_state


def test_answers_are_cached_per_model_and_bypassed_by_feedback(app, client, synthetic, monkeypatch):
    """A repeated request for a user without feedback is answered from the loaded model's response cache
    (the engine is not called again); other parameters are other entries; a feedback event sends the user
    down the fold-in path at once."""
    engine = get_state(app).current.engine
    calls = count_calls(monkeypatch, engine, "recommend_indices")
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
    engine = get_state(app).current.engine
    calls = count_calls(monkeypatch, engine, "recommend_indices")
    client = app.test_client()
    for _ in range(3):
        assert client.get(f"/v1/users/{synthetic.users.ids[0]}/recommendations?k=3").status_code == 200
    assert len(calls) == 3 and len(get_state(app).current.responses) == 0


def test_reload_starts_a_new_response_cache(own_root):
    root, model = own_root
    app = create_app({"BUNDLE": str(root), "API_KEYS": KEY, "FEEDBACK_DB_URL": "sqlite://"})
    client = app.test_client()
    first = client.get("/v1/users/u0001/recommendations?k=3").get_json()["model_version"]
    second = model.save(new_version_path(root, "second"))
    publish(root, second)
    assert client.post("/v1/admin/reload", headers=AUTH).status_code == 200
    body = client.get("/v1/users/u0001/recommendations?k=3").get_json()
    assert first != second.name and body["model_version"] == second.name


def test_response_cache_is_bounded_lru_by_bytes():
    from server.cache import ResponseCache

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
    from server.fastpath import plain_query

    args = MultiDict(parse_qsl(query, keep_blank_values=True))
    if query not in PLAIN:
        assert plain_query(args) is None
        return
    loaded = schemas.RecommendQuery().load(args.to_dict())
    assert plain_query(args) == PLAIN[query] == (loaded["k"], loaded["offset"], loaded["include_seen"])


@pytest.mark.parametrize("query", list(PLAIN))
def test_the_fast_parser_returns_what_the_schema_loads(app, query):
    """The whole argument dict of a plain query (defaults of exclude, genre, ... included) is the schema's, so
    a new field or default in RecommendQuery cannot drift from the fast path."""
    from urllib.parse import parse_qsl

    from server import schemas
    from server.fastpath import Parser

    with app.test_request_context(f"/v1/users/u0001/recommendations?{query}"):
        parsed = Parser().parse(schemas.RecommendQuery(), location="query")
    assert parsed == schemas.RecommendQuery().load(dict(parse_qsl(query, keep_blank_values=True)))


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


def test_answer_bytes_equal_the_schema_dump_and_cache_outcomes_are_counted(app, client, synthetic):
    """The service serialises its answer dict directly; the bytes are those of the Recommendations schema's
    dump (known user, unknown user's fallback, a user folded in from feedback), and every answer counts as a
    response-cache hit, miss or bypass in /metrics."""
    from server import schemas
    from server.metrics import CACHE_RESULTS

    before = {r: c._value.get() for r, c in CACHE_RESULTS.items()}
    known, folded = synthetic.users.ids[1], synthetic.users.ids[4]
    client.post("/v1/feedback", json=events((folded, synthetic.items.ids[0])), headers=AUTH)
    for user in (known, "nobody-knows-me", folded, known):
        response = client.get(f"/v1/users/{user}/recommendations?k=4")
        dumped = app.json.dumps(schemas.Recommendations().dump(response.get_json())) + "\n"
        assert response.get_data(as_text=True) == dumped
        assert response.get_json()["fallback"] is (user == "nobody-knows-me")
    counted = {r: c._value.get() - before[r] for r, c in CACHE_RESULTS.items()}
    assert counted == {"hit": 1, "miss": 2, "bypass": 1}


def test_the_service_measures_index_against_exact_when_it_loads_a_model(models_root, monkeypatch):
    """Index or exact (mode auto) is decided by figures taken where the service runs, not where the bundle
    was built: loading a model with an index calibrates it; mode exact, or no index, skips that."""
    from recsys.engine import Engine
    from server import state as state_module

    calls = []
    monkeypatch.setattr(Engine, "calibrate", lambda self: calls.append(self) or {})
    state_module.ModelState(str(models_root), mode="auto")
    assert calls == [], "no index: nothing to decide"
    real = state_module.load_engine

    def with_index(path, mode):
        engine, bundle = real(path, mode=mode)
        engine.retriever.indexes["ip"] = "an index"
        return engine, bundle

    monkeypatch.setattr(state_module, "load_engine", with_index)
    loaded = state_module.ModelState(str(models_root), mode="auto").current
    assert calls == [loaded.engine]
    state_module.ModelState(str(models_root), mode="exact")
    assert len(calls) == 1


def test_loading_a_model_builds_what_requests_read_before_workers_fork(models_root):
    """The popularity order and what every computed answer scans (the int8 item codes, or the float32 column
    copy where a catalogue is too small for codes) are made when the model loads (in gunicorn's master, so
    the forked workers share them), not on a worker's first request; an engine outside the service makes
    them only when a single query asks for them."""
    from recsys.engine import load_engine
    from server.state import ModelState

    loaded = ModelState(str(models_root)).current
    built = vars(loaded.engine.retriever)
    assert "item_codes" in built and "_popularity" in vars(loaded.engine.catalogue)
    if built["item_codes"] is None:
        np.testing.assert_array_equal(built["item_columns"], loaded.engine.item_vectors.T)
    else:
        assert "item_columns" not in built  # the codes answer single queries: no second float32 copy
    plain, _ = load_engine(loaded.path)
    assert not {"item_codes", "item_columns"} & set(vars(plain.retriever))
    plain.recommend_indices(np.array([0]), 3)
    assert "item_codes" in vars(plain.retriever)


_text = st.text(st.characters(codec="utf-8"), max_size=12)  # any unicode: quotes, controls, non-ASCII


_attributes = st.dictionaries(_text, _text | st.integers() | st.floats(width=64) | st.lists(_text, max_size=3),
                              max_size=4)


@settings(max_examples=200, deadline=None)
@given(user=_text, version=_text, fallback=st.booleans(), with_attributes=st.booleans(),
       items=st.lists(st.tuples(_text, st.floats(width=64), st.none() | _text, _attributes), max_size=12))
def test_recommendations_json_writes_what_flask_dumps_of_the_dict(user, version, fallback, with_attributes,
                                                                  items) -> None:
    """The answer's JSON is written without building its dicts: byte for byte what Flask's default provider
    writes of the document (sorted keys, ASCII escapes, NaN and infinities as json writes them), with each item's
    attributes as the catalogue writes them (`Catalogue.attributes_json_at`) or without any."""
    import json

    from server import fastpath

    app = Flask(__name__)
    ids, scores, titles, attributes = (list(column) for column in zip(*items)) if items else ([], [], [], [])
    doc = {"user": user, "items": [{"id": i, "score": s, "title": t, **({"attributes": a} if with_attributes else {})}
                                   for i, s, t, a in items], "fallback": fallback, "model_version": version}
    texts = [json.dumps(a, sort_keys=True) for a in attributes] if with_attributes else None
    with app.app_context():
        assert fastpath.writes_as_flask_does(app)
        assert fastpath.recommendations_json(user, ids, scores, titles, fallback, version, texts) == \
            app.json.dumps(doc)


def test_an_app_with_other_json_settings_answers_through_its_own_provider(models_root, tmp_path, synthetic):
    """An app whose JSON provider does not write as Flask's default does (here: keys unsorted) gets its
    answers from that provider, not from the hot path's own writer."""
    from server import fastpath

    app = create_app({"BUNDLE": str(models_root), "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'f.db'}"})
    app.json.sort_keys = False
    assert not fastpath.writes_as_flask_does(app)
    body = app.test_client().get(f"/v1/users/{synthetic.users.ids[1]}/recommendations?k=3").get_data(as_text=True)
    assert body.startswith('{"user": ') and '"id": ' in body


def test_a_plain_query_skips_marshmallow_and_any_other_is_loaded_by_the_schema(client, monkeypatch):
    """One view serves both: the blueprint's parser (fastpath.Parser) reads a plain query string itself and
    hands every other one to webargs, which loads it with RecommendQuery."""
    from server import schemas

    loads = []
    load = schemas.RecommendQuery.load
    monkeypatch.setattr(schemas.RecommendQuery, "load", lambda self, *a, **kw: loads.append(1) or load(self, *a, **kw))
    assert client.get("/v1/users/u0001/recommendations?k=3&offset=1").status_code == 200
    assert loads == [], "plain: no schema load"
    assert client.get("/v1/users/u0001/recommendations?k=3&genre=cluster1").status_code == 200
    assert loads == [1], "a filter: the schema loads it"
