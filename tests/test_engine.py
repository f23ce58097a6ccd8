"""Tests for recsys.engine: topk, Engine retrieval with filters, fold-in, similarity and the id-level API."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data import IdMap
from recsys.engine import Engine
from recsys.exceptions import DataValidationError, UnknownIdError
from recsys.retrieval import topk

N_USERS, N_ITEMS, DIM = 12, 30, 5


# ----------------------------------------------------------------------------------------- helpers
def make_engine(seed: int = 0, n_users: int = N_USERS, n_items: int = N_ITEMS, dim: int = DIM,
                seen_density: float = 0.2, **kwargs) -> Engine:
    rng = np.random.default_rng(seed)
    item_vectors = rng.standard_normal((n_items, dim)).astype(np.float32)
    user_vectors = rng.standard_normal((n_users, dim)).astype(np.float32)
    seen = sp.random(n_users, n_items, density=seen_density, format="csr", random_state=seed, dtype=np.float32)
    seen.data[:] = 1
    kwargs.setdefault("seen", seen)
    return Engine(item_vectors, user_vectors, IdMap(f"u{u}" for u in range(n_users)),
                  IdMap(f"i{i:02d}" for i in range(n_items)), **kwargs)


def brute_force(query: np.ndarray, vectors: np.ndarray, k: int, passing: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Reference: sort the passing candidates by score (ties by index), pad with -1 / -inf."""
    passing = np.asarray(sorted(set(np.asarray(passing, dtype=np.int64).tolist())), dtype=np.int64)
    scores = vectors[passing] @ query if len(passing) else np.empty(0, np.float32)
    order = np.argsort(-scores, kind="stable")[:k]
    idx = np.full(k, -1, np.int64)
    val = np.full(k, -np.inf, np.float32)
    idx[:len(order)], val[:len(order)] = passing[order], scores[order]
    return idx, val


def assert_matches(idx: np.ndarray, val: np.ndarray, ref_idx: np.ndarray, ref_val: np.ndarray) -> None:
    """Same scores; same items except where scores tie within float error."""
    np.testing.assert_allclose(val, ref_val, rtol=1e-5, atol=1e-5)
    assert np.array_equal(idx == -1, ref_idx == -1)
    for pos in np.flatnonzero(idx != ref_idx):  # only near-ties (float error) may differ from the reference
        near = np.isclose(ref_val, ref_val[pos], rtol=1e-5, atol=1e-5)
        assert near.sum() > 1, (idx, ref_idx, ref_val)


def excluded_sets(exclude, n: int) -> list[set[int]]:
    if exclude is None:
        return [set() for _ in range(n)]
    if sp.issparse(exclude):
        return [set(exclude[r].indices.tolist()) for r in range(n)]
    return [set(np.asarray(e).tolist()) for e in exclude]


# --------------------------------------------------------------------------------------------- topk
def test_topk_best_first() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [4.0, -1.0, 2.0, 3.0]], np.float32)
    idx, val = topk(scores, 2)
    np.testing.assert_array_equal(idx, [[1, 2], [0, 3]])
    np.testing.assert_allclose(val, [[0.9, 0.5], [4.0, 3.0]])
    assert idx.dtype == np.int64 and val.dtype == np.float32


def test_topk_pads_when_k_exceeds_columns() -> None:
    idx, val = topk(np.array([[1.0, 3.0, 2.0]], np.float32), 5)
    np.testing.assert_array_equal(idx, [[1, 2, 0, -1, -1]])
    np.testing.assert_array_equal(val, [[3.0, 2.0, 1.0, -np.inf, -np.inf]])
    idx, val = topk(np.empty((2, 0), np.float32), 3)
    assert idx.shape == (2, 3) and np.all(idx == -1) and np.all(val == -np.inf)


def test_topk_minus_inf_become_minus_one() -> None:
    scores = np.array([[-np.inf, 2.0, -np.inf, 1.0, -np.inf]], np.float32)
    for k in (2, 3, 4, 5, 7):
        idx, val = topk(scores, k)
        assert idx[0, :2].tolist() == [1, 3]
        assert np.all(idx[0, 2:] == -1) and np.all(val[0, 2:] == -np.inf)
    idx, _ = topk(np.full((1, 4), -np.inf, np.float32), 2)
    np.testing.assert_array_equal(idx, [[-1, -1]])


def test_topk_ties_stable() -> None:
    """Equal scores rank by column index, whatever k, so top-k is a prefix of top-(k+1)."""
    scores = np.zeros((2, 1000), np.float32)
    scores[0, [500, 900]] = 1.0
    scores[1, 3] = -1.0
    for k in (1, 3, 10, 999, 1000, 1001):
        idx, _ = topk(scores, k)
        ref0 = np.argsort(-scores[0], kind="stable")[:k]
        ref1 = np.argsort(-scores[1], kind="stable")[:k]
        np.testing.assert_array_equal(idx[0, :len(ref0)], ref0)
        np.testing.assert_array_equal(idx[1, :len(ref1)], ref1)
    rng = np.random.default_rng(0)
    few_values = rng.integers(0, 4, (20, 60)).astype(np.float32)
    for k in (1, 5, 17, 59, 60):
        idx, _ = topk(few_values, k)
        ref = np.argsort(-few_values, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(idx, ref)


def scores_of_kind(kind: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Score rows for the top-k tests: 'normal', 'few values' (ties everywhere), 'mostly excluded' (99.9 %
    -inf), 'half excluded' (every other column, and all of row 0) or 'all excluded'."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(shape).astype(np.float32)
    if kind == "few values":
        scores = rng.integers(0, 3, shape).astype(np.float32)
    elif kind == "mostly excluded":
        scores[rng.random(shape) < 0.999] = -np.inf
    elif kind == "half excluded":
        scores[:, ::2] = -np.inf
        scores[0] = -np.inf
    elif kind == "all excluded":
        scores[:] = -np.inf
    return scores


@pytest.mark.parametrize("n_cols", [2048, 3001, 9724, 41632])
@pytest.mark.parametrize("kind", ["normal", "few values", "mostly excluded", "half excluded"])
def test_topk_threshold_path_matches_stable_argsort(n_cols: int, kind: str) -> None:
    """Wide catalogues take the block-maximum path: the same answer as a stable sort, ties and -inf included."""
    scores = scores_of_kind(kind, (12, n_cols), seed=n_cols)
    for k in (1, 10, 50):
        idx, val = topk(scores, k)
        ref = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ref_val = np.take_along_axis(scores, ref, axis=1)
        np.testing.assert_array_equal(idx, np.where(np.isfinite(ref_val), ref, -1))
        np.testing.assert_array_equal(val, ref_val)


@pytest.mark.parametrize("n_cols", [1, 7, 2048, 9724])
@pytest.mark.parametrize("kind", ["normal", "few values", "mostly excluded", "all excluded"])
def test_topk_of_one_row_matches_stable_argsort(n_cols: int, kind: str) -> None:
    """One row (every serving request) has its own path: the same answer as a stable sort, ties, -inf and
    k beyond the row's length included."""
    for row in scores_of_kind(kind, (6, n_cols), seed=n_cols):
        for k in (1, 10, 50, n_cols, n_cols + 3):
            idx, val = topk(row[None, :], k)
            ref = np.argsort(-row, kind="stable")[:k]
            ref_val = row[ref]
            assert idx.shape == val.shape == (1, k) and idx.dtype == np.int64 and val.dtype == np.float32
            np.testing.assert_array_equal(idx[0, :len(ref)], np.where(np.isfinite(ref_val), ref, -1))
            np.testing.assert_array_equal(val[0, :len(ref)], ref_val)
            assert np.all(idx[0, len(ref):] == -1)


def test_topk_matches_argsort_on_random_scores() -> None:
    scores = np.random.default_rng(1).standard_normal((50, 200)).astype(np.float32)
    idx, val = topk(scores, 10)
    np.testing.assert_array_equal(idx, np.argsort(-scores, axis=1, kind="stable")[:, :10])
    np.testing.assert_array_equal(val, -np.sort(-scores, axis=1)[:, :10])


# ------------------------------------------------------------------------------------------- search
def check_search(engine: Engine, queries: np.ndarray, k: int, exclude=None, allow=None) -> None:
    idx, val = engine.retriever.search(queries, k, exclude=exclude, allow=allow)
    assert idx.shape == val.shape == (len(queries), k)
    ex = excluded_sets(exclude, len(queries))
    allowed = set(range(engine.n_items)) if allow is None else set(np.asarray(allow).tolist())
    for q in range(len(queries)):
        passing = np.array(sorted(allowed - ex[q]), dtype=np.int64)
        ref_idx, ref_val = brute_force(queries[q], engine.item_vectors, k, passing)
        assert_matches(idx[q], val[q], ref_idx, ref_val)
        assert (idx[q] >= 0).sum() == min(k, len(passing))
        if len(passing) >= k:
            assert np.all(idx[q] >= 0)
        assert not (set(idx[q].tolist()) - {-1}) & ex[q]
        assert set(idx[q].tolist()) - {-1} <= allowed


def test_search_matches_brute_force() -> None:
    engine = make_engine()
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((9, DIM)).astype(np.float32)
    exclude_list = [rng.choice(N_ITEMS, size=rng.integers(0, 8), replace=False) for _ in range(9)]
    exclude_csr = sp.csr_matrix((np.ones(sum(map(len, exclude_list))),
                                 (np.repeat(np.arange(9), [len(e) for e in exclude_list]),
                                  np.concatenate(exclude_list))), shape=(9, N_ITEMS))
    allow = rng.choice(N_ITEMS, size=12, replace=False)
    for k in (1, 5, 12, 30, 40):
        check_search(engine, queries, k)
        check_search(engine, queries, k, exclude=exclude_list)
        check_search(engine, queries, k, exclude=exclude_csr)
        check_search(engine, queries, k, allow=allow)
        check_search(engine, queries, k, exclude=exclude_list, allow=allow)
        check_search(engine, queries, k, exclude=exclude_csr, allow=np.concatenate([allow, allow[:3]]))


def test_search_exact_k_when_enough_pass() -> None:
    engine = make_engine()
    query = np.ones((1, DIM), np.float32)
    exclude = [np.arange(0, N_ITEMS, 2)]  # 15 items pass
    idx, val = engine.retriever.search(query, 15, exclude=exclude)
    assert np.all(idx >= 0) and np.all(np.isfinite(val)) and set(idx[0].tolist()) == set(range(1, N_ITEMS, 2))
    idx, val = engine.retriever.search(query, 16, exclude=exclude)
    assert idx[0, -1] == -1 and val[0, -1] == -np.inf and np.all(idx[0, :15] >= 0)
    idx, _ = engine.retriever.search(query, 3, allow=np.array([], dtype=np.int64))
    assert np.all(idx == -1)
    idx, _ = engine.retriever.search(query, 3, exclude=[np.array([4, 5])], allow=np.array([4, 5, 6]))
    assert idx[0].tolist() == [6, -1, -1]


def test_search_batches_equal_single_queries() -> None:
    rng = np.random.default_rng(2)
    queries = rng.standard_normal((23, DIM)).astype(np.float32)
    exclude = [rng.choice(N_ITEMS, size=5, replace=False) for _ in range(23)]
    exclude_csr = sp.csr_matrix((np.ones(5 * 23), (np.repeat(np.arange(23), 5), np.concatenate(exclude))),
                                shape=(23, N_ITEMS))
    allow = rng.choice(N_ITEMS, size=20, replace=False)
    small, big = make_engine(batch_size=4), make_engine(batch_size=1024)
    for kwargs in ({}, {"exclude": exclude}, {"exclude": exclude_csr}, {"allow": allow},
                   {"exclude": exclude_csr, "allow": allow}):
        idx_small, val_small = small.retriever.search(queries, 7, **kwargs)
        idx_big, val_big = big.retriever.search(queries, 7, **kwargs)
        np.testing.assert_array_equal(idx_small, idx_big)
        np.testing.assert_array_equal(val_small, val_big)
        for q in (0, 3, 4, 22):
            single_kwargs = dict(kwargs)
            if "exclude" in kwargs:
                single_kwargs["exclude"] = [exclude[q]]
            idx_one, val_one = big.retriever.search(queries[q], 7, **single_kwargs)
            np.testing.assert_array_equal(idx_one[0], idx_big[q])
            np.testing.assert_allclose(val_one[0], val_big[q], rtol=1e-5, atol=1e-6)


def test_search_custom_candidates() -> None:
    engine = make_engine()
    candidates = np.random.default_rng(3).standard_normal((7, DIM)).astype(np.float32)
    query = np.random.default_rng(4).standard_normal(DIM).astype(np.float32)
    idx, val = engine.retriever.search(query, 3, candidates=candidates)
    ref_idx, ref_val = brute_force(query, candidates, 3, np.arange(7))
    assert_matches(idx[0], val[0], ref_idx, ref_val)


# -------------------------------------------------------------------------------- recommend_indices
def test_recommend_indices_excludes_seen() -> None:
    engine = make_engine(seen_density=0.4)
    users = np.arange(N_USERS)
    idx, val = engine.recommend_indices(users, k=N_ITEMS)
    for u in users:
        seen = set(engine.seen[u].indices.tolist())
        assert seen and not seen & set(idx[u].tolist())
        assert (idx[u] >= 0).sum() == N_ITEMS - len(seen)
        ref_idx, ref_val = brute_force(engine.user_vectors[u], engine.item_vectors, N_ITEMS,
                                       np.array(sorted(set(range(N_ITEMS)) - seen)))
        assert_matches(idx[u], val[u], ref_idx, ref_val)
    idx, val = engine.recommend_indices(users, k=N_ITEMS, exclude_seen=False)
    assert np.all(idx >= 0)
    for u in users:
        np.testing.assert_allclose(val[u], np.sort(engine.item_vectors @ engine.user_vectors[u])[::-1],
                                   rtol=1e-5, atol=1e-6)


def test_recommend_indices_deny_and_allow() -> None:
    engine = make_engine(seen_density=0.3)
    deny = np.array([0, 1, 2, 3, -1])  # -1 (unknown id) is ignored
    allow = np.arange(0, 20)
    for exclude_seen in (True, False):
        idx, _ = engine.recommend_indices(np.arange(N_USERS), k=25, exclude_seen=exclude_seen, deny=deny,
                                          allow=allow)
        for u in range(N_USERS):
            got = set(idx[u].tolist()) - {-1}
            seen = set(engine.seen[u].indices.tolist()) if exclude_seen else set()
            assert got == set(range(4, 20)) - seen
    idx, _ = engine.recommend_indices(np.array([0]), k=5, deny=np.array([], dtype=np.int64), exclude_seen=False)
    np.testing.assert_array_equal(idx[0], np.argsort(-(engine.item_vectors @ engine.user_vectors[0]))[:5])


# ------------------------------------------------------------------------------------------ fold-in
def test_fold_in_mean() -> None:
    engine = make_engine(foldin={"method": "mean"})
    history = np.array([3, 7, 7, 11])
    np.testing.assert_allclose(engine.fold_in(history), engine.item_vectors[history].mean(axis=0), rtol=1e-5)
    w = np.array([1.0, 2.0, 0.5, 3.0])
    expected = (w[:, None] * engine.item_vectors[history]).sum(0) / w.sum()
    np.testing.assert_allclose(engine.fold_in(history, w), expected, rtol=1e-5)


def test_fold_in_ridge_closed_form() -> None:
    reg = 0.7
    engine = make_engine(foldin={"method": "ridge", "reg": reg})
    history = np.array([0, 4, 9, 15, 22, 29])
    h = engine.item_vectors[history].astype(np.float64)
    expected = np.linalg.solve(h.T @ h + reg * np.eye(DIM), h.T @ np.ones(len(history)))
    got = engine.fold_in(history)
    assert got.shape == (DIM,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    default_reg = make_engine(foldin={"method": "ridge"})
    np.testing.assert_allclose(default_reg.fold_in(history),
                               np.linalg.solve(h.T @ h + 0.1 * np.eye(DIM), h.T @ np.ones(len(history))),
                               rtol=1e-4, atol=1e-5)


def test_fold_in_ridge_with_unobserved_weight_is_the_ials_user_solve() -> None:
    reg, alpha0 = 0.7, 0.05
    engine = make_engine(foldin={"method": "ridge", "reg": reg, "unobserved_weight": alpha0})
    history, w = np.array([0, 4, 9]), np.array([2.0, 1.0, 3.0])
    v = engine.item_vectors.astype(np.float64)
    h = v[history]
    expected = np.linalg.solve(h.T @ (w[:, None] * h) + alpha0 * v.T @ v + reg * np.eye(DIM), h.T @ w)
    np.testing.assert_allclose(engine.fold_in(history, w), expected, rtol=1e-4, atol=1e-5)


def test_fold_in_indicator_is_the_weighted_history() -> None:
    n = 12
    engine = Engine(np.eye(n, dtype=np.float32), np.zeros((3, n), np.float32), IdMap([f"u{i}" for i in range(3)]),
                    IdMap([f"i{i:02d}" for i in range(n)]), foldin={"method": "indicator"})
    got = engine.fold_in(np.array([1, 5, 5]), np.array([1.0, 2.0, 0.5]))
    expected = np.zeros(n, np.float32)
    expected[[1, 5]] = [1.0, 2.5]
    np.testing.assert_array_equal(got, expected)


def test_fold_in_constant_and_empty_history() -> None:
    mean_user = make_engine().user_vectors.mean(axis=0)
    constant = make_engine(foldin={"method": "constant"})
    np.testing.assert_allclose(constant.fold_in(np.array([1, 2, 3])), mean_user, rtol=1e-6)
    for method in ("mean", "ridge", "constant"):
        engine = make_engine(foldin={"method": method})
        np.testing.assert_allclose(engine.fold_in(np.array([], dtype=np.int64)), mean_user, rtol=1e-6)


def test_invalid_engine_config() -> None:
    with pytest.raises(DataValidationError, match="The fold-in 'method' must be one of"):
        make_engine(foldin={"method": "median"})
    with pytest.raises(DataValidationError, match="similarity must be one of"):
        make_engine(similarity="euclid")
    with pytest.raises(DataValidationError, match="Vector shapes do not match the id maps"):
        Engine(np.zeros((3, 2)), np.zeros((2, 2)), IdMap(["a", "b"]), IdMap(["x", "y"]))


# -------------------------------------------------------------------------------- history, similar
def test_recommend_for_history() -> None:
    engine = make_engine(foldin={"method": "mean"})
    ids, scores = engine.recommend_for_history(["i03", "nope", "i10", "i20"], k=N_ITEMS)
    assert ids.shape == scores.shape == (N_ITEMS,)
    got = [x for x in ids if x is not None]
    assert len(got) == N_ITEMS - 3 and not {"i03", "i10", "i20"} & set(got)
    vector = engine.item_vectors[[3, 10, 20]].mean(axis=0)  # "nope" is ignored
    ref_idx, ref_val = brute_force(vector, engine.item_vectors, N_ITEMS,
                                   np.array(sorted(set(range(N_ITEMS)) - {3, 10, 20})))
    assert_matches(engine.items.to_index(got), scores[:len(got)], ref_idx[:len(got)], ref_val[:len(got)])
    ids, _ = engine.recommend_for_history(["i03", "i10", "i20"], k=N_ITEMS, exclude_history=False)
    assert None not in ids.tolist() and {"i03", "i10", "i20"} <= set(ids.tolist())
    # weights follow the kept (known) items
    ids_w, _ = engine.recommend_for_history(["i03", "nope", "i10"], k=5, weights=[1.0, 100.0, 3.0])
    vector = (engine.item_vectors[3] + 3 * engine.item_vectors[10]) / 4
    ref_idx, _ = brute_force(vector, engine.item_vectors, 5, np.array(sorted(set(range(N_ITEMS)) - {3, 10})))
    assert engine.items.to_index(ids_w).tolist() == ref_idx.tolist()
    # all unknown: the mean user vector, nothing excluded
    ids, scores = engine.recommend_for_history(["zz"], k=3)
    ref_idx, _ = brute_force(engine.user_vectors.mean(0), engine.item_vectors, 3, np.arange(N_ITEMS))
    assert engine.items.to_index(ids).tolist() == ref_idx.tolist()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (b @ a) / (np.linalg.norm(b, axis=1) * np.linalg.norm(a))


def test_similar_items_cosine_and_dot() -> None:
    cos_engine, dot_engine = make_engine(similarity="cosine"), make_engine(similarity="dot")
    vectors = cos_engine.item_vectors
    queries = np.arange(N_ITEMS)
    cos_idx, cos_val = cos_engine.similar_item_indices(queries, k=N_ITEMS)
    dot_idx, dot_val = dot_engine.similar_item_indices(queries, k=N_ITEMS)
    for q in queries:
        others = np.array([i for i in range(N_ITEMS) if i != q])
        assert q not in cos_idx[q] and q not in dot_idx[q]
        assert cos_idx[q, -1] == -1 and dot_idx[q, -1] == -1  # only n-1 candidates
        ref = others[np.argsort(-cosine(vectors[q], vectors[others]), kind="stable")]
        np.testing.assert_array_equal(cos_idx[q, :-1], ref)
        np.testing.assert_allclose(cos_val[q, :-1], np.sort(cosine(vectors[q], vectors[others]))[::-1],
                                   rtol=1e-5, atol=1e-6)
        dot_scores = vectors[others] @ vectors[q]
        np.testing.assert_array_equal(dot_idx[q, :-1], others[np.argsort(-dot_scores, kind="stable")])
        np.testing.assert_allclose(dot_val[q, :-1], np.sort(dot_scores)[::-1], rtol=1e-5, atol=1e-6)
    assert np.all(cos_val[:, :-1] <= 1 + 1e-6)
    assert not np.array_equal(cos_idx, dot_idx)


def test_similar_items_never_returns_query_even_with_duplicates() -> None:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((6, 3)).astype(np.float32)
    items[1] = items[0]  # identical vectors
    engine = Engine(items, rng.standard_normal((2, 3)), IdMap(["a", "b"]), IdMap(list("pqrstu")))
    ids, scores = engine.similar_items(["p", "q"], k=3)
    assert ids[0, 0] == "q" and ids[1, 0] == "p"
    np.testing.assert_allclose(scores[:, 0], [1.0, 1.0], rtol=1e-5)


def test_similar_users() -> None:
    engine = make_engine()
    ids, scores = engine.similar_users(["u0", "u5"], k=4)
    assert ids.shape == (2, 4) and "u0" not in ids[0] and "u5" not in ids[1]
    vectors = engine.user_vectors
    others = np.array([u for u in range(N_USERS) if u != 5])
    ref = others[np.argsort(-cosine(vectors[5], vectors[others]), kind="stable")[:4]]
    assert ids[1].tolist() == [f"u{u}" for u in ref]
    np.testing.assert_allclose(scores[1], np.sort(cosine(vectors[5], vectors[others]))[::-1][:4], rtol=1e-5)


def test_similarity_dims_restricts_dimensions() -> None:
    rng = np.random.default_rng(7)
    items = rng.standard_normal((20, 4)).astype(np.float32)
    items[:, 3] = rng.uniform(-100, 100, 20)  # a huge "bias" column that would dominate
    users = rng.standard_normal((5, 4)).astype(np.float32)
    ids_u, ids_i = IdMap(f"u{u}" for u in range(5)), IdMap(f"i{i}" for i in range(20))
    for similarity in ("cosine", "dot"):
        restricted = Engine(items, users, ids_u, ids_i, similarity=similarity, similarity_dims=3)
        reference = Engine(items[:, :3], users[:, :3], ids_u, ids_i, similarity=similarity)
        full = Engine(items, users, ids_u, ids_i, similarity=similarity)
        q = np.arange(20)
        r_idx, r_val = restricted.similar_item_indices(q, k=5)
        e_idx, e_val = reference.similar_item_indices(q, k=5)
        np.testing.assert_array_equal(r_idx, e_idx)
        np.testing.assert_allclose(r_val, e_val, rtol=1e-5)
        assert not np.array_equal(r_idx, full.similar_item_indices(q, k=5)[0])
        np.testing.assert_array_equal(restricted.similar_user_indices(np.arange(5), 2)[0],
                                      reference.similar_user_indices(np.arange(5), 2)[0])
    # recommendations still use every dimension
    restricted = Engine(items, users, ids_u, ids_i, similarity_dims=3)
    np.testing.assert_array_equal(restricted.recommend_indices(np.arange(5), 5)[0],
                                  Engine(items, users, ids_u, ids_i).recommend_indices(np.arange(5), 5)[0])


# ------------------------------------------------------------------------------------------- id API
def test_recommend_by_id() -> None:
    engine = make_engine()
    ids, scores = engine.recommend(["u3", "u0"], k=4)
    idx, val = engine.recommend_indices(np.array([3, 0]), k=4)
    assert ids.tolist() == engine.items.to_ids(idx).tolist()
    np.testing.assert_array_equal(scores, val)
    ids, _ = engine.recommend(["u1"], k=10, exclude_seen=False, items=["i05", "i06", "i07"],
                              exclude=["i06", "unknown"])
    assert set(ids[0].tolist()) == {"i05", "i07", None} and ids[0, 2:].tolist() == [None] * 8
    ids, scores = engine.recommend(["u1", "u2"], k=3, items=[])  # empty allow-list: nothing to return
    assert ids.tolist() == [[None] * 3] * 2 and np.all(scores == -np.inf)


def test_unknown_ids_raise() -> None:
    engine = make_engine()
    with pytest.raises(UnknownIdError) as err:
        engine.recommend(["u1", "ghost"])
    assert "'ghost'" in str(err.value) and "user" in str(err.value)
    with pytest.raises(UnknownIdError, match="'ghost'"):
        engine.similar_users(["ghost"])
    with pytest.raises(UnknownIdError, match="Unknown item 'nope'"):
        engine.similar_items(["i01", "nope"])
    with pytest.raises(UnknownIdError, match="Unknown item 'nope'"):
        engine.recommend(["u1"], items=["nope"])


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3", None])
def test_bad_k(k: object) -> None:
    engine = make_engine()
    calls = (lambda: engine.recommend(["u1"], k=k), lambda: engine.recommend_for_history(["i01"], k=k),
             lambda: engine.similar_items(["i01"], k=k), lambda: engine.similar_users(["u1"], k=k))
    for call in calls:
        with pytest.raises(DataValidationError, match="'k' parameter must be an int >= 1") as err:
            call()
        assert repr(k) in str(err.value)


def test_numpy_int_k_accepted() -> None:
    ids, _ = make_engine().recommend(["u1"], k=np.int64(3))
    assert ids.shape == (1, 3)


def test_titles() -> None:
    meta = pd.DataFrame({"item": [f"i{i:02d}" for i in range(N_ITEMS)],
                         "title": [f"Title {i}" for i in range(N_ITEMS)]})
    engine = make_engine(item_metadata=meta)
    titles = engine.catalogue.titles(np.array(["i02", "missing", "i29"], dtype=object))
    assert titles.tolist() == ["Title 2", None, "Title 29"]
    ids, _ = engine.recommend(["u0"], k=N_ITEMS)  # 2-D with None padding
    titles = engine.catalogue.titles(ids)
    assert titles.shape == ids.shape
    for i, t in zip(ids[0], titles[0]):
        assert t == (None if i is None else f"Title {int(i[1:])}")
    assert make_engine().catalogue.titles(np.array(["i01"])) is None
    assert make_engine(item_metadata=meta.drop(columns="title")).catalogue.titles(np.array(["i01"])) is None


# ------------------------------------------------------------------------------------------ property
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    n_items=st.integers(1, 25),
    n_users=st.integers(1, 6),
    dim=st.integers(1, 4),
    k=st.integers(1, 30),
    batch_size=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_property_filters_match_brute_force(data, n_items, n_users, dim, k, batch_size, seed) -> None:
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    users = rng.standard_normal((n_users, dim)).astype(np.float32)
    seen = sp.csr_matrix(rng.random((n_users, n_items)) < data.draw(st.floats(0, 1)), dtype=np.float32)
    engine = Engine(items, users, IdMap(f"u{u}" for u in range(n_users)), IdMap(f"i{i}" for i in range(n_items)),
                    seen=seen, batch_size=batch_size)
    item_idx = st.integers(0, n_items - 1)
    allow = data.draw(st.none() | st.lists(item_idx, max_size=n_items + 3))
    deny = data.draw(st.none() | st.lists(item_idx, max_size=n_items))
    exclude_seen = data.draw(st.booleans())
    queried = np.array(data.draw(st.lists(st.integers(0, n_users - 1), min_size=1, max_size=8)))
    idx, val = engine.recommend_indices(queried, k, exclude_seen=exclude_seen,
                                        allow=None if allow is None else np.array(allow, dtype=np.int64),
                                        deny=None if deny is None else np.array(deny, dtype=np.int64))
    assert idx.shape == val.shape == (len(queried), k)
    for row, u in enumerate(queried):
        passing = set(range(n_items)) if allow is None else set(allow)
        passing -= set(deny or [])
        if exclude_seen:
            passing -= set(seen[u].indices.tolist())
        ref_idx, ref_val = brute_force(users[u], items, k, np.array(sorted(passing), dtype=np.int64))
        assert (idx[row] >= 0).sum() == min(k, len(passing))
        assert set(idx[row].tolist()) - {-1} <= passing
        assert_matches(idx[row], val[row], ref_idx, ref_val)


def test_seen_entries_with_zero_or_negative_weight_are_still_excluded_with_a_deny_list():
    """Regression: seen + deny was summed numerically, so a seen weight of -1 plus a deny 1 cancelled out."""
    items = IdMap([f"i{j}" for j in range(4)])
    users = IdMap(["u"])
    seen = sp.csr_matrix((np.array([-1.0, 0.0], np.float32), np.array([0, 1]), np.array([0, 2])), shape=(1, 4))
    engine = Engine(np.eye(4, dtype=np.float32)[:, :1] + 1, np.ones((1, 1), np.float32), users, items, seen=seen)
    idx, _ = engine.recommend_indices(np.array([0]), k=4, deny=np.array([0, 2]))
    assert set(idx[0][idx[0] >= 0]) == {3}  # 0 and 1 seen (weights -1 and a stored 0), 2 denied


def test_titles_are_none_for_items_without_metadata():
    items = IdMap(["a", "b"])
    meta = pd.DataFrame({"item": ["a", "b"], "title": ["A", np.nan]})
    engine = Engine(np.ones((2, 1), np.float32), np.ones((1, 1), np.float32), IdMap(["u"]), items,
                    item_metadata=meta)
    assert list(engine.catalogue.titles(np.array(["a", "b", "zzz"], dtype=object))) == ["A", None, None]


def test_exact_scoring_blocks_bound_memory_and_give_the_same_answer(monkeypatch):
    """Rows per block shrink with the catalogue so the score matrix stays within EXACT_BLOCK floats."""
    from recsys.retrieval import retriever as retriever_module

    rng = np.random.default_rng(0)
    items, users = rng.normal(size=(500, 4)).astype(np.float32), rng.normal(size=(37, 4)).astype(np.float32)
    engine = Engine(items, users, IdMap([f"u{i}" for i in range(37)]), IdMap([f"i{j}" for j in range(500)]))
    whole = engine.recommend_indices(np.arange(37), 5)
    monkeypatch.setattr(retriever_module, "EXACT_BLOCK", 1000)  # two rows per block
    blocked = engine.recommend_indices(np.arange(37), 5)
    np.testing.assert_array_equal(whole[0], blocked[0])


# -------------------------------------------------------------------- one user's answer (server and CLI)
GENRES = ["drama", "comedy", "horror"]


def genre_engine(**kwargs) -> Engine:
    """make_engine with item metadata: item i has genre GENRES[i % 3], a title, and a year unless i % 5 == 0."""
    meta = pd.DataFrame({"item": [f"i{i:02d}" for i in range(N_ITEMS)],
                         "title": [f"Title {i}" for i in range(N_ITEMS)],
                         "genres": [[GENRES[i % 3]] for i in range(N_ITEMS)],
                         "year": [np.nan if i % 5 == 0 else 1990.0 + i for i in range(N_ITEMS)]})
    return make_engine(item_metadata=meta, **kwargs)


def test_recommend_user_known_user_is_recommend() -> None:
    engine = make_engine()
    rec = engine.recommend_user("u3", k=6)
    ids, scores = engine.recommend(["u3"], k=6)
    assert rec.user == "u3" and rec.fallback is False
    assert rec.item_ids.tolist() == ids[0].tolist()
    np.testing.assert_array_equal(rec.scores, scores[0])
    seen = set(engine.items.ids[engine.seen[3].indices])
    assert seen and not seen & set(rec.item_ids)
    every = engine.recommend_user("u3", k=N_ITEMS, include_seen=True)
    assert set(every.item_ids) == set(engine.items.ids), "include_seen: the seen items come back too"


def test_recommend_user_offset_is_the_tail_of_k_plus_offset() -> None:
    engine = make_engine()
    for user, history in (("u2", None), ("ghost", None), ("ghost", [("i04", 1.0), ("i09", 2.0)])):
        whole = engine.recommend_user(user, k=8, history=history)
        page = engine.recommend_user(user, k=3, offset=5, history=history)
        assert page.item_ids.tolist() == whole.item_ids[5:].tolist(), user
        np.testing.assert_array_equal(page.scores, whole.scores[5:])
        assert page.fallback == whole.fallback
    n_unseen = N_ITEMS - engine.seen[2].nnz
    short = engine.recommend_user("u2", k=5, offset=n_unseen - 2)
    assert len(short.item_ids) == 2, "past the end: only what is left, no padding"


def test_recommend_user_unknown_user_falls_back_to_popularity_order() -> None:
    engine = make_engine()
    counts = np.asarray((engine.seen != 0).sum(axis=0)).ravel()
    order = sorted(range(N_ITEMS), key=lambda i: (-counts[i], i))  # most users first, ties by index
    np.testing.assert_array_equal(engine.catalogue.popularity, counts)
    assert engine.catalogue.popular_order.tolist() == order
    rec = engine.recommend_user("stranger", k=5)
    assert rec.fallback is True and rec.item_ids.tolist() == engine.items.ids[order[:5]].tolist()
    np.testing.assert_array_equal(rec.scores, counts[order[:5]])
    ids, scores = engine.popular_items(5)
    assert ids.tolist() == rec.item_ids.tolist() and scores.tolist() == rec.scores.tolist()
    anonymous = engine.recommend_user(None, k=5, history=[("not-an-item", 1.0)])
    assert anonymous.fallback is True and anonymous.item_ids.tolist() == rec.item_ids.tolist()


def test_recommend_user_filters_and_exclusions_keep_k_when_enough_pass() -> None:
    engine = genre_engine()
    drama = {f"i{i:02d}" for i in range(0, N_ITEMS, 3)}  # 10 items
    for user in ("u1", "stranger"):
        rec = engine.recommend_user(user, k=4, filters={"genres": ["drama"]})
        assert len(rec.item_ids) == 4 and set(rec.item_ids) <= drama, user
        top = rec.item_ids[0]
        rec2 = engine.recommend_user(user, k=4, filters={"genres": ["drama"]}, exclude=[top, "no-such-item"])
        assert len(rec2.item_ids) == 4 and top not in rec2.item_ids and set(rec2.item_ids) <= drama
        assert rec2.item_ids[:3].tolist() == rec.item_ids[1:].tolist(), "exclusion removes, nothing else moves"
    either = engine.recommend_user("stranger", k=N_ITEMS, filters={"genres": ["drama", "horror"]})
    assert len(either.item_ids) == 20 and not {f"i{i:02d}" for i in range(1, N_ITEMS, 3)} & set(either.item_ids)
    ids, _ = engine.popular_items(3, filters={"genres": ["comedy"]}, exclude=["i01"])
    assert len(ids) == 3 and "i01" not in ids and all(int(i[1:]) % 3 == 1 for i in ids)
    with pytest.raises(DataValidationError, match="Unknown item attribute 'colour'"):
        engine.recommend_user("u1", filters={"colour": ["red"]})


def test_recommend_user_feedback_changes_the_answer() -> None:
    engine = make_engine(foldin={"method": "ridge", "reg": 0.1})
    history = [("i04", 1.0), ("i07", 2.0), ("no-such-item", 1.0), ("i11", -1.0)]
    before = engine.recommend_user("ghost", k=5)
    after = engine.recommend_user("ghost", k=5, history=history)
    assert before.fallback and not after.fallback and after.item_ids.tolist() != before.item_ids.tolist()
    folded = engine.fold_in(np.array([4, 7]), np.array([1.0, 2.0]))  # unknown ids and weights <= 0 left out
    ref = brute_force(folded, engine.item_vectors, 5, np.setdiff1d(np.arange(N_ITEMS), [4, 7, 11]))
    assert_matches(engine.items.to_index(after.item_ids), after.scores, *ref)
    assert {"i04", "i07", "i11"}.isdisjoint(after.item_ids), "the history is hidden, the disliked item too"
    seen = engine.recommend_user("ghost", k=N_ITEMS, history=history, include_seen=True)
    assert {"i04", "i07", "i11"} <= set(seen.item_ids)
    # a known user: what the bundle knows about them is folded in together with the feedback
    known = engine.seen[1].indices
    mine = engine.recommend_user("u1", k=5, history=[("i04", 3.0)])
    vector = engine.fold_in(np.concatenate([known, [4]]), np.concatenate([np.ones(len(known)), [3.0]]))
    ref = brute_force(vector, engine.item_vectors, 5, np.setdiff1d(np.arange(N_ITEMS), [*known, 4]))
    assert_matches(engine.items.to_index(mine.item_ids), mine.scores, *ref)
    assert mine.item_ids.tolist() != engine.recommend_user("u1", k=5).item_ids.tolist()


def test_recommend_user_anonymous_history_is_recommend_for_history() -> None:
    engine = make_engine()
    rec = engine.recommend_user(None, k=6, history=[("i03", 1.0), ("i08", 1.0), ("zzz", 1.0)])
    ids, scores = engine.recommend_for_history(["i03", "i08", "zzz"], k=6)
    assert rec.user is None and rec.fallback is False and rec.item_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(rec.scores, scores)


def test_recommend_users_ranks_the_known_users_in_one_search_and_answers_as_one_by_one(monkeypatch) -> None:
    """The batch path (several users in one search: their seen items and the deny list combined per row) gives
    each user the answer of the single-user path, with paging, filters, exclusions and fold-in alike."""
    engine = genre_engine()
    users = ["u1", "u2", "ghost", "stranger", None, "u3", "u1"]
    histories = {"ghost": [("i04", 1.0)], None: [("i03", 1.0)]}
    options = {"k": 4, "offset": 1, "exclude": ["i00", "i06"], "filters": {"genres": ["drama", "comedy"]}}
    one_by_one = [engine.recommend_user(u, history=histories.get(u), **options) for u in users]
    searches = []
    original = engine.recommend_indices
    monkeypatch.setattr(engine, "recommend_indices", lambda idx, *a, **kw: searches.append(len(idx)) or
                        original(idx, *a, **kw))
    together = engine.recommend_users(users, histories=histories, **options)
    assert searches == [3], "u1, u2 and u3 in one search"
    for a, b in zip(together, one_by_one, strict=True):
        assert (a.user, a.item_ids.tolist(), a.fallback) == (b.user, b.item_ids.tolist(), b.fallback)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    assert [r.fallback for r in together] == [False, False, False, True, False, False, False]


@pytest.mark.parametrize("offset", [-1, 1.5, True, "2", None])
def test_recommend_user_bad_offset(offset: object) -> None:
    with pytest.raises(DataValidationError, match="'offset' parameter must be an int >= 0"):
        make_engine().recommend_user("u1", offset=offset)
    with pytest.raises(DataValidationError, match="'k' parameter must be an int >= 1"):
        make_engine().recommend_user("u1", k=0)


def test_item_record() -> None:
    engine = genre_engine()
    assert engine.catalogue.record("i07") == {"item": "i07", "title": "Title 7", "genres": ["comedy"], "year": 1997.0}
    assert "year" not in engine.catalogue.record("i05"), "missing values are left out"
    assert make_engine().catalogue.record("i01") == {"item": "i01"}
    with pytest.raises(UnknownIdError, match="Unknown item 'nope'"):
        engine.catalogue.record("nope")


def test_scored_items_leave_out_padding_and_carry_titles_and_the_bundles_columns():
    meta = pd.DataFrame({"item": ["a", "b"], "title": ["A film", None]})
    engine = Engine(np.eye(2, dtype=np.float32), np.ones((1, 2), np.float32), IdMap(["u"]), IdMap(["a", "b"]),
                    item_metadata=meta)
    items = engine.catalogue.scored_items(np.array(["b", "a", None], dtype=object), np.array([2.0, 1.0, -np.inf]))
    assert items == [{"id": "b", "score": 2.0, "title": None, "attributes": {}},
                     {"id": "a", "score": 1.0, "title": "A film", "attributes": {"title": "A film"}}]


def test_recommend_batches_hold_one_batch_in_memory_whatever_the_number_of_users() -> None:
    """recommend-all streams: the peak memory of ranking every user, batch by batch, stays that of one batch
    (a score matrix of batch x items), so four times the users cost no more than about the same peak."""
    import tracemalloc

    rng = np.random.default_rng(0)
    items = rng.normal(size=(2000, 16)).astype(np.float32)

    def peak(n_users: int) -> int:
        users = rng.normal(size=(n_users, 16)).astype(np.float32)
        engine = Engine(items, users, IdMap([f"u{i}" for i in range(n_users)]),
                        IdMap([f"i{j}" for j in range(2000)]))
        tracemalloc.start()
        try:
            rows = sum(len(frame) for frame in engine.recommend_batches(10, batch_size=256))
            return tracemalloc.get_traced_memory()[1] if rows == 10 * n_users else -1
        finally:
            tracemalloc.stop()

    small, large = peak(1000), peak(4000)
    assert 0 < large < 1.5 * small, (small, large)
    assert large < 4000 * 2000 * 4 / 2, "under half of one score matrix of every user (float32)"
