"""Retrieval indexes (Annoy forests and k-means cells): the inner-product augmentation, tuning to a recall
target, filters that still return k, persistence."""
from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data import IdMap
from recsys.engine import Engine
from recsys.exceptions import BundleError, DataValidationError
from recsys.models import MF, Popularity, load
from recsys.retrieval import (
    AnnIndex,
    CellIndex,
    build_indexes,
    exact_topk,
    load_index,
    recall_at_k,
    tune_index,
)
from recsys.retrieval.calibrate import KINDS


def mf_like(n_items: int, dim: int = 16, n_queries: int = 50, seed: int = 0):
    """Clustered item vectors with log-normal norms (popularity-like), and user-like queries."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    items = centres[rng.integers(0, 40, n_items)] + 0.7 * rng.normal(size=(n_items, dim))
    items *= rng.lognormal(0, 0.4, size=(n_items, 1))
    queries = centres[rng.integers(0, 40, n_queries)] + 0.7 * rng.normal(size=(n_queries, dim))
    return items.astype(np.float32), queries.astype(np.float32)


@pytest.fixture(scope="module")
def vectors():
    return mf_like(3000)


@pytest.fixture(scope="module")
def exhaustive_index(vectors):
    items, _ = vectors
    index = AnnIndex("ip", n_trees=10).build(items)
    index.fetch, index.search_k = 300, 1000  # fetch 10 * 300 = every item of every range: exact
    return index


def test_augmentation_makes_angular_search_rank_by_inner_product(vectors, exhaustive_index):
    items, queries = vectors
    found = exhaustive_index.search(queries, items, 10)
    np.testing.assert_array_equal(found, exact_topk(queries, items, 10))


def test_tune_reaches_the_target_and_records_honest_measurements(vectors):
    items, queries = vectors
    # slow_factor=inf: this checks correctness, not timing (a loaded machine must not change the outcome)
    index, stats = tune_index(items, queries, k=10, target_recall=0.9, n_trees_grid=(5, 10, 20), slow_factor=np.inf,
                              kinds=("annoy",))
    assert stats.recall >= 0.9 and stats.kind == "annoy" and isinstance(index, AnnIndex)
    assert stats.recall == pytest.approx(recall_at_k(index.search(queries, items, 10),
                                                      exact_topk(queries, items, 10)), abs=1e-3)
    assert (stats.n_trees, stats.search_k, stats.n_ranges) == (index.n_trees, index.search_k, index.n_ranges)
    assert stats.to_dict()["speedup"] == round(stats.exact_ms / stats.ann_ms, 3), "the speedup of its own timings"


def test_tuned_cells_reach_the_target_and_record_their_setting(vectors):
    items, queries = vectors
    index, stats = tune_index(items, queries, k=10, target_recall=0.9, slow_factor=np.inf, kinds=("cells",))
    assert stats.kind == "cells" and isinstance(index, CellIndex) and stats.recall >= 0.9
    assert (stats.n_cells, stats.n_probe) == (index.n_cells, index.n_probe) and stats.n_cells >= 16
    assert stats.recall == pytest.approx(recall_at_k(index.search(queries, items, 10),
                                                      exact_topk(queries, items, 10)), abs=1e-3)


def test_tuning_measures_both_kinds_and_keeps_the_faster(vectors, caplog):
    items, queries = vectors
    with caplog.at_level("INFO", logger="recsys"):
        _, stats = tune_index(items, queries, k=10, target_recall=0.9, slow_factor=np.inf)
    measured = [r.getMessage() for r in caplog.records if "ms/query (exact" in r.getMessage()]
    assert any(m.startswith("cells ") for m in measured) and any(m.startswith("annoy ") for m in measured)
    figures = [re.search(r"recall@10=([\d.]+), ([\d.]+) ms/query", m).groups() for m in measured]
    met = [float(ms) for recall, ms in figures if float(recall) >= 0.9]
    assert stats.ann_ms == pytest.approx(min(met), abs=1e-3), "the fastest setting that met the target"
    with pytest.raises(DataValidationError, match="'kinds' parameter of tune_index"):
        tune_index(items, queries, kinds=("hnsw",))


def test_cells_probing_every_cell_are_exact_and_survive_save_and_mmap_load(vectors, tmp_path):
    items, queries = vectors
    index = CellIndex("ip", n_cells=30, n_probe=30).build(items)
    assert index.n_cells == 30 and sorted(index.order.tolist()) == list(range(len(items)))
    np.testing.assert_array_equal(index.search(queries, items, 10), exact_topk(queries, items, 10))
    index.n_probe = 3
    for name, write in index.file_writers("c").items():
        write(tmp_path / name)
    loaded = load_index(tmp_path, "c", **index.config())
    assert isinstance(loaded, CellIndex) and isinstance(loaded.grouped, np.memmap)
    np.testing.assert_array_equal(loaded.search(queries, items, 10), index.search(queries, items, 10))
    assert recall_at_k(index.search(queries, items, 10), exact_topk(queries, items, 10)) < 1, "3 of 30: approximate"


def test_unreachable_target_returns_the_most_accurate_setting_and_is_not_kept(vectors):
    items, queries = vectors
    _, stats = build_indexes(items, queries, None, target_recall=1.01, n_queries=20)
    assert stats["ip"]["recall"] < 1.01 and stats["ip"]["kept"] is False


def test_angular_metric_ranks_by_cosine(vectors):
    items, queries = vectors
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    index = AnnIndex("angular", n_trees=10).build(unit)
    index.fetch, index.search_k = 300, 1000
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_array_equal(index.search(q, unit, 5), exact_topk(q, unit, 5))


def test_bad_metric_is_named():
    with pytest.raises(DataValidationError, match="'metric' parameter of AnnIndex"):
        AnnIndex("dot")


def test_norm_ranges_are_top_heavy_and_cover_everything():
    from recsys.retrieval import norm_ranges

    bounds = norm_ranges(np.arange(100_000, dtype=float))
    assert bounds[0] == 0 and bounds[-1] == 100_000 and np.all(np.diff(bounds) >= 1000)
    assert list(bounds[:3]) == [0, 1000, 3000]  # 0.2% is folded up to the 1000-item minimum
    assert list(norm_ranges(np.ones(500))) == [0, 500]


def test_ranged_index_on_wide_norms_beats_a_single_range():
    """The reason for norm ranges: with popularity-like norms one augmented range loses recall."""
    rng = np.random.default_rng(3)
    items, queries = mf_like(20_000, dim=16, n_queries=100, seed=3)
    items *= rng.lognormal(0, 0.8, size=(len(items), 1)).astype(np.float32)
    truth = exact_topk(queries, items, 10)
    ranged = AnnIndex("ip", n_trees=10, search_k=20).build(items)
    single = AnnIndex("ip", n_trees=10, search_k=20, quantiles=(1.0,)).build(items)
    assert single.n_ranges == 1 and ranged.n_ranges > 3
    assert ranged.exact_ranges >= 1, "the largest-norm range is scored exactly"
    r_ranged = recall_at_k(ranged.search(queries, items, 10), truth)
    r_single = recall_at_k(single.search(queries, items, 10), truth)
    assert r_ranged > r_single + 0.1, (r_ranged, r_single)


def test_exact_prefix_survives_save_and_load(tmp_path):
    items, queries = mf_like(20_000, dim=8, n_queries=20, seed=5)
    index = AnnIndex("ip", n_trees=5, search_k=5).build(items)
    assert index.exact_ranges >= 1 and len(index.prefix) == index.bounds[index.exact_ranges]
    for name, write in index.file_writers("p").items():
        write(tmp_path / name)
    assert not (tmp_path / "p.0.ann").exists(), "exactly scored ranges have no forest"
    loaded = AnnIndex.load(tmp_path, "p", **index.config())
    np.testing.assert_array_equal(loaded.search(queries, items, 10), index.search(queries, items, 10))


def test_save_and_mmap_load_give_the_same_answers(vectors, exhaustive_index, tmp_path):
    items, queries = vectors
    for name, write in exhaustive_index.file_writers("idx").items():
        write(tmp_path / name)
    loaded = AnnIndex.load(tmp_path, "idx", **exhaustive_index.config())
    np.testing.assert_array_equal(loaded.search(queries, items, 10), exhaustive_index.search(queries, items, 10))


# --------------------------------------------------------------------------------- engine with an index
def engine_with(items: np.ndarray, users: np.ndarray, index: AnnIndex | None, seen=None, mode="ann",
                metadata=None) -> Engine:
    return Engine(items, users, IdMap([f"u{i}" for i in range(len(users))]),
                  IdMap([f"i{j}" for j in range(len(items))]), seen=seen, item_metadata=metadata,
                  indexes={"ip": index} if index else None, mode=mode)


@pytest.fixture(scope="module", params=KINDS)
def fast_index(vectors, request):
    items, _ = vectors
    if request.param == "cells":
        return CellIndex("ip", n_cells=50, n_probe=1).build(items)  # deliberately approximate
    return AnnIndex("ip", n_trees=3, search_k=1, fetch=1).build(items)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_filtered_index_results_hold_k_items_that_pass_best_first(vectors, fast_index, data):
    items, queries = vectors
    n = len(items)
    k = data.draw(st.integers(1, 30))
    allow_share = data.draw(st.sampled_from([None, 0.002, 0.05, 0.5]))
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    allow = None if allow_share is None else rng.choice(n, max(1, int(n * allow_share)), replace=False)
    n_seen = data.draw(st.integers(0, 200))
    seen = sp.csr_matrix((np.ones(n_seen), (np.zeros(n_seen, int), rng.choice(n, n_seen, replace=False))),
                         shape=(1, n))
    engine = engine_with(items, queries[:1], fast_index, seen=seen)
    idx, scores = engine.recommend_indices(np.array([0]), k, allow=allow)
    passing = np.setdiff1d(np.arange(n) if allow is None else allow, seen.indices)
    got = idx[0][idx[0] >= 0]
    assert len(got) == min(k, len(passing)), "exactly k when k pass"
    assert set(got) <= set(passing)
    np.testing.assert_allclose(scores[0][:len(got)], items[got] @ queries[0], rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores[0][:len(got)]) <= 1e-6), "best first"
    exact = engine_with(items, queries[:1], None, seen=seen, mode="exact")
    exact_idx, _ = exact.recommend_indices(np.array([0]), k, allow=allow)
    if len(passing) <= 4 * k:  # small candidate sets go through the exact fallback: identical to brute force
        np.testing.assert_array_equal(idx, exact_idx)


@pytest.mark.parametrize("kind", KINDS)
def test_exhaustive_index_with_filters_matches_brute_force(vectors, exhaustive_index, kind):
    items, queries = vectors
    if kind == "cells":
        exhaustive_index = CellIndex("ip", n_cells=40, n_probe=40).build(items)
    rng = np.random.default_rng(1)
    seen = sp.random(len(queries), len(items), density=0.02, format="csr", random_state=2)
    allow = rng.choice(len(items), 1500, replace=False)
    ann = engine_with(items, queries, exhaustive_index, seen=seen)
    exact = engine_with(items, queries, None, seen=seen, mode="exact")
    users = np.arange(len(queries))
    np.testing.assert_array_equal(ann.recommend_indices(users, 10, allow=allow)[0],
                                  exact.recommend_indices(users, 10, allow=allow)[0])


def test_auto_mode_follows_the_measurements(vectors, fast_index):
    items, queries = vectors
    engine = engine_with(items, queries, fast_index, mode="auto")
    stats = {"recall": 0.97, "target_recall": 0.95, "ann_ms": 0.1, "exact_ms": 1.0, "exact_batch_ms": 0.05}
    engine.retriever.index_stats = {"ip": stats}
    assert engine.retriever.use_index("ip", 1, len(items), None), "one query: the index is 10x faster"
    assert not engine.retriever.use_index("ip", 512, len(items), None), "a batch: exact is cheaper per query"
    assert not engine.retriever.use_index("ip", 1, 50, None), "a small allow-list: scanning it is cheaper"
    assert not engine.retriever.use_index("ip", 1, len(items), "exact")
    engine.retriever.index_stats = {"ip": {**stats, "recall": 0.5}}
    assert not engine.retriever.use_index("ip", 1, len(items), None), "below the recall target: never"


def test_calibration_replaces_the_bundles_timings_with_ones_taken_here(vectors, fast_index, monkeypatch):
    """The bundle's figures (taken at build time, perhaps on a busy machine) say the index is 1000x faster;
    calibrate() measures both paths here, and auto mode then follows what it measured."""
    items, queries = vectors
    engine = engine_with(items, queries, fast_index, mode="auto")
    engine.retriever.index_stats = {"ip": {"recall": 0.97, "target_recall": 0.95, "ann_ms": 0.001, "exact_ms": 1.0,
                                 "exact_batch_ms": 0.05}}
    calls = []
    search_one = fast_index.search_one
    monkeypatch.setattr(fast_index, "search_one", lambda *a, **kw: calls.append(1) or search_one(*a, **kw))
    stats = engine.calibrate(n_queries=20)["ip"]
    assert stats["calibrated"] and len(calls) == 21, "20 timed index searches after one warm-up"
    assert stats["exact_ms"] != 1.0 and stats["ann_ms"] != 0.001 and min(stats["ann_ms"], stats["exact_ms"]) > 0
    assert engine.retriever.use_index("ip", 1, len(items), None) is (stats["ann_ms"] < stats["exact_ms"])


def test_single_query_exact_timing_uses_one_blas_thread(vectors, monkeypatch):
    """Exact one-query scoring is timed as it is served (one BLAS thread per request thread)."""
    from threadpoolctl import threadpool_info

    from recsys.retrieval import calibrate as index_module

    items, queries = vectors
    threads = []
    exact_topk = index_module.exact_topk
    monkeypatch.setattr(index_module, "exact_topk", lambda q, v, k: threads.append(
        (len(q), max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))) or exact_topk(q, v, k))
    index_module.measure_exact(queries[:5], items, 10)
    assert {n for rows, n in threads[1:6]} == {1} and all(rows == 1 for rows, _ in threads[1:6])


# ------------------------------------------------------------------------------------- attribute filters
def test_attribute_filters_and_recommend_all(synthetic):
    model = Popularity().fit(synthetic)
    engine = model.engine_
    user = synthetic.users.ids[0]
    ids, _ = engine.recommend([user], k=5, filters={"genres": "cluster1"})
    genres = engine.catalogue.metadata.set_index("item")["genres"]
    assert all("cluster1" in genres[i] for i in ids[0])
    both, _ = engine.recommend([user], k=5, filters={"genres": ["cluster1", "cluster2"]})
    assert all({"cluster1", "cluster2"} & set(genres[i]) for i in both[0])
    with pytest.raises(DataValidationError, match="Unknown item attribute 'colour'"):
        engine.recommend([user], k=5, filters={"colour": "red"})
    frame = engine.recommend_all(k=3)
    assert len(frame) == 3 * synthetic.n_users
    first = frame[frame["user"] == user]["item"].tolist()
    assert first == list(model.recommend(user, k=3)[0])


def test_filters_need_metadata():
    engine = Engine(np.ones((2, 1)), np.ones((1, 1)), IdMap(["u"]), IdMap(["a", "b"]))
    with pytest.raises(DataValidationError, match="no item metadata"):
        engine.recommend(["u"], filters={"genres": "x"})


# -------------------------------------------------------------------------------------------- bundles
def test_indexes_travel_in_the_bundle_and_are_verified(synthetic, tmp_path):
    model = MF(factors=8, epochs=3, progress=False, device="cpu").fit(synthetic)
    stats = model.build_index(target_recall=0.5, n_queries=50)
    assert set(stats) == {"ip", "angular"}
    model.engine_.retriever.indexes = {m: model.engine_.retriever.indexes.get(m) or AnnIndex(m, 5).build(
        model.engine_.item_vectors if m == "ip" else model.engine_.similarity_vectors) for m in ("ip", "angular")}
    path = model.save(tmp_path / "b")
    loaded = load(path)
    assert set(loaded.engine_.retriever.indexes) == {"ip", "angular"}
    assert loaded.manifest_.index["ip"]["prefix"] == "index_ip"
    for mode in ("exact", "ann"):
        loaded.engine_.retriever.mode = mode
        ids, _ = loaded.recommend(synthetic.users.ids[:5], k=5)
        assert all(i is not None for i in ids.ravel())
    data = bytearray((path / "index_ip.0.ann").read_bytes())
    data[100] ^= 1
    (path / "index_ip.0.ann").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="Checksum mismatch for index_ip.0.ann"):
        load(path)


def test_popularity_builds_no_angular_index(synthetic):
    stats = Popularity().fit(synthetic).build_index(n_queries=20)
    assert set(stats) == {"ip"}


def test_forest_searches_count_the_ranges_the_norm_bound_did_not_cut():
    """The counter benchmarks read: at least one forest per query, never more than the index has; a query along
    the largest-norm items stops after the first ranges."""
    items, queries = mf_like(3000, n_queries=40)
    index = AnnIndex("ip", n_trees=5).build(items)
    searchable = index.n_ranges - index.exact_ranges
    assert searchable > 1
    index.search(queries, items, 10)
    assert len(queries) <= index.forest_searches <= len(queries) * searchable
    before = index.forest_searches
    top = items[np.argsort(-np.linalg.norm(items, axis=1))[:1]]
    index.search(top * 100, items, 1)
    assert index.forest_searches - before < searchable, "the bound cut the small-norm ranges"


def test_a_cells_index_travels_in_the_bundle(synthetic, tmp_path):
    model = MF(factors=8, epochs=3, progress=False, device="cpu").fit(synthetic)
    engine = model.engine_
    engine.retriever.indexes = {"ip": CellIndex("ip", n_cells=16, n_probe=16).build(engine.item_vectors)}
    path = model.save(tmp_path / "b")
    assert (path / "index_ip.cells.safetensors").exists()
    loaded = load(path)
    assert isinstance(loaded.engine_.retriever.indexes["ip"], CellIndex) and loaded.manifest_.index["ip"]["config"]["kind"] == "cells"
    users = synthetic.users.ids[:20]
    loaded.engine_.retriever.mode = "ann"
    by_index = loaded.recommend(users, k=5)[0]
    loaded.engine_.retriever.mode = "exact"
    np.testing.assert_array_equal(by_index, loaded.recommend(users, k=5)[0])  # every cell probed: exact


@pytest.mark.parametrize("ann_ms, kept", [(2.0, False), (1.0, False), (0.5, True)])
def test_an_index_no_faster_than_exact_is_not_kept(vectors, monkeypatch, ann_ms, kept):
    """Recall met, but no faster than exact scanning: the bundle does not keep the index (it would only cost
    disk and page cache); faster: kept."""
    from recsys.retrieval import IndexStats
    from recsys.retrieval import calibrate as calibrate_module

    items, queries = vectors
    index = CellIndex("ip", n_cells=16).build(items)
    stats = IndexStats("ip", 0, 0, 10, 0.95, 0.99, ann_ms, 1.0, 0.1, 256, 0.1, 50, 1, "cells", 16, 8)
    monkeypatch.setattr(calibrate_module, "tune_index", lambda *a, **kw: (index, stats))
    indexes, measured = build_indexes(items, queries, None)
    assert ("ip" in indexes) is kept and measured["ip"]["kept"] is kept
