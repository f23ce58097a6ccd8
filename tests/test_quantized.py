"""One query's exact top-k from int8 codes (recsys/retrieval/int8.py, recsys/_scan.c): the answer is the exact
answer (float64 scoring), ties by index, whatever the vectors' scale, spread or duplicates."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import require_service

from recsys.data import IdMap
from recsys.engine import Engine
from recsys.retrieval import int8 as quantized
from recsys.retrieval.int8 import MIN_CELLS, Int8Items

require_service(None if quantized._scan is not None else "recsys._scan is not built (no C compiler at install?)")


def exact_topk(vectors: np.ndarray, q: np.ndarray, k: int, excluded=()) -> tuple[np.ndarray, np.ndarray]:
    # each item's dot product in float64, computed the same way wherever the item sits (equal items tie)
    scores = np.einsum("ij,j->i", vectors.astype(np.float64), q.astype(np.float64))
    scores[np.asarray(excluded, np.int64)] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order].astype(np.float32)


def assert_same(found, vectors, q, k, excluded=()) -> None:
    assert found is not None
    idx, val = found
    ref_idx, ref_val = exact_topk(vectors, q, k, excluded)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(val, ref_val, rtol=1e-6)
    assert idx.dtype == np.int64 and val.dtype == np.float32


def profile(kind: str, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Item vectors of several shapes: MF-like (norms barely vary), iALS-like (log-normal norms), a bias
    column five times the spread of the rest, duplicated rows (exact ties), and coordinates spanning six decades."""
    v = rng.normal(size=(n, d))
    if kind == "ials":
        v *= np.exp(rng.normal(0, 0.55, size=(n, 1)))
    elif kind == "bias":
        v[:, -1] = rng.normal(0, 5, size=n)
    elif kind == "duplicates":
        v[n // 2:] = v[:n - n // 2]
    elif kind == "wide":
        v *= 10.0 ** rng.uniform(-3, 3, size=(n, d))
    elif kind == "sparse":  # a blend's item-item block: most columns 3 % nonzero (scored sparse when 16 or more)
        v[:, d // 4 + 1:] *= rng.random((n, d - d // 4 - 1)) < 0.03
    return v.astype(np.float32)


@pytest.mark.parametrize("kind", ["mf", "ials", "bias", "duplicates", "wide", "sparse"])
@pytest.mark.parametrize("n, d, k", [(5000, 64, 10), (3000, 257, 100), (700, 3, 5), (300, 16, 20), (300, 2000, 10)])
def test_topk_is_the_float32_answer(kind, n, d, k) -> None:
    rng = np.random.default_rng(n + d + k)
    vectors = profile(kind, n, d, rng)
    codes = Int8Items(vectors)
    for _ in range(5):
        q = rng.normal(size=d).astype(np.float32) * rng.uniform(0.01, 100)
        excluded = rng.choice(n, rng.integers(0, n // 3), replace=False)
        user = vectors[rng.integers(n)].copy()  # a query lying on an item
        for query, skip in ((q, excluded), (user, ())):
            found = codes.topk(query, k, skip)
            if found is None and kind == "wide":  # int8 cannot bound these closely: float32 answers
                continue
            assert_same(found, vectors, query, k, skip)


def test_mostly_zero_columns_are_scored_sparse_for_the_same_answer_from_fewer_bytes() -> None:
    """An EASE block beside iALS factors (a blend): its columns leave the codes for a sparse matrix."""
    rng = np.random.default_rng(5)
    n = 4000
    users = np.zeros((n, 600), np.float32)
    for j in range(600):  # each column: one user's items, about 1 % of the catalogue (a few users have more)
        items = rng.choice(n, int(rng.pareto(1.5) * 20) + 5 if j % 50 else n // 8, replace=False)
        users[items, j] = rng.exponential(size=len(items))
    vectors = np.hstack([rng.normal(size=(n, 48)).astype(np.float32), users])
    codes = Int8Items(vectors)
    assert codes.sparse is not None and codes.codes.shape[1] < 100  # the factors and the heaviest users' columns
    assert Int8Items(vectors, sparse=False).sparse is None
    assert codes.nbytes < vectors.size / 3  # under a third of the all-int8 copy
    for _ in range(20):
        q = rng.normal(size=vectors.shape[1]).astype(np.float32)
        excluded = rng.choice(n, 200, replace=False)
        assert_same(codes.topk(q, 10, excluded), vectors, q, 10, excluded)
    q[:48] = 0  # only the sparse part and a few dense columns scored
    assert_same(codes.topk(q, 10), vectors, q, 10)
    with pytest.raises(ValueError, match="offsets and full together"):
        quantized._scan.topk(codes.codes, codes.scales, codes.columns, codes.errors, codes.vectors,
                             q[codes.dense_columns].copy(), codes.q_max, np.zeros(0, np.int64), 3, codes.bounds, 10,
                             np.empty(3, np.int64), np.empty(3, np.float32), np.zeros(n, np.float32))
    with pytest.raises(ValueError, match="offsets and vectors"):
        quantized._scan.topk(codes.codes, codes.scales, codes.columns, codes.errors, codes.vectors,
                             q[codes.dense_columns].copy(), codes.q_max, np.zeros(0, np.int64), 3, codes.bounds, 10,
                             np.empty(3, np.int64), np.empty(3, np.float32), np.zeros(n - 1, np.float32), 0.0, q)


def test_duplicated_items_rank_by_index() -> None:
    rng = np.random.default_rng(0)
    vectors = np.repeat(rng.normal(size=(400, 32)).astype(np.float32), 5, axis=0)  # 5 copies of each
    q = rng.normal(size=32).astype(np.float32)
    idx, val = Int8Items(vectors).topk(q, 12)
    assert_same((idx, val), vectors, q, 12)
    best = int(np.argmax(vectors[::5] @ q)) * 5
    assert idx[:5].tolist() == list(range(best, best + 5))  # the five copies of the best item, by index


def test_topk_declines_what_it_cannot_decide() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    codes = Int8Items(vectors)
    q = rng.normal(size=8).astype(np.float32)
    assert codes.topk(q, 200) is None and codes.topk(q, 0) is None  # k must be below the number of items
    assert codes.topk(np.zeros(8, np.float32), 3) is None
    assert codes.topk(np.array([np.nan] + [1.0] * 7, np.float32), 3) is None
    assert codes.topk(np.array([np.inf] + [1.0] * 7, np.float32), 3) is None
    assert codes.topk(q, 3, excluded=np.arange(198)) is None  # two items left for k = 3
    assert_same(codes.topk(q, 3, excluded=np.arange(197)), vectors, q, 3, np.arange(197))
    assert Int8Items.build(vectors) is None  # 1,600 coordinates: fewer than MIN_CELLS, float32 is faster
    bad = np.ones((MIN_CELLS, 1), np.float32)
    bad[3] = np.nan
    assert Int8Items.build(bad) is None and isinstance(Int8Items.build(np.ones_like(bad)), Int8Items)


def test_a_spread_too_wide_for_int8_is_declined_not_answered_wrongly(monkeypatch) -> None:
    """When the bound leaves more candidates than MAX_CANDIDATE_SHARE of the items, float32 answers."""
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(1000, 16)).astype(np.float32)
    vectors[0, 0] = 1e6  # one huge coordinate: item 0's scale swamps its other coordinates
    codes = Int8Items(vectors)
    q = rng.normal(size=16).astype(np.float32)
    assert codes.topk(q, 10) is None
    monkeypatch.setattr(quantized, "MAX_CANDIDATE_SHARE", 1.0)
    assert_same(codes.topk(q, 10), vectors, q, 10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(65, 600), d=st.integers(1, 40), k=st.integers(1, 30),
       seed=st.integers(0, 2 ** 32 - 1))
def test_property_topk_equals_the_exact_answer(data, n, d, k, seed) -> None:
    rng = np.random.default_rng(seed)
    kind = data.draw(st.sampled_from(["mf", "ials", "bias", "duplicates", "wide", "integers", "sparse"]))
    d = d + 60 if kind == "sparse" else d  # 16 sparse columns at least: the split is taken
    vectors = np.rint(rng.normal(size=(n, d)) * 3).astype(np.float32) if kind == "integers" else \
        profile(kind, n, d, rng)
    q = (rng.normal(size=d) * 10.0 ** rng.uniform(-4, 4)).astype(np.float32)
    excluded = rng.choice(n, data.draw(st.integers(0, n - 1)), replace=False)
    found = Int8Items(vectors).topk(q, k, excluded)
    if found is None:  # declined: a zero query, fewer than k left, or too many candidates
        return
    assert_same(found, vectors, q, k, excluded)


def test_portable_loop_equals_avx2_and_bad_arguments_name_the_array() -> None:
    rng = np.random.default_rng(3)
    for n, d in [(1, 1), (7, 16), (4099, 33), (513, 257)]:
        codes = Int8Items(rng.normal(size=(n, d)).astype(np.float32))
        q = rng.normal(size=d).astype(np.float32)
        fast, plain = np.empty(n, np.float32), np.empty(n, np.float32)
        args = codes.codes, codes.scales, codes.columns, q, codes.q_max
        norms = quantized._scan.scan(*args, fast)
        assert quantized._scan.scan(*args, plain, True) == norms
        np.testing.assert_array_equal(fast, plain)
        t = norms[0]
        rounded = np.clip(np.rint(q.astype(np.float64) * codes.columns / t), -codes.q_max, codes.q_max)
        expect = (codes.scales * (codes.codes[:, :d].astype(np.int64) @ rounded.astype(np.int64)).astype(
            np.float32)) * np.float32(t)
        np.testing.assert_array_equal(fast, expect)
        assert norms[1] == pytest.approx(np.linalg.norm(q.astype(np.float64)))
    assert quantized._scan.kernel in ("avx2", "portable")
    scan, out, c = quantized._scan.scan, np.empty(7, np.float32), codes.columns
    with pytest.raises(ValueError, match="'codes' must be a 2-d C-contiguous array of format 'b'"):
        scan(codes.codes.astype(np.int16), codes.scales, c, q, codes.q_max, out)
    with pytest.raises(ValueError, match="'query' must be"):
        scan(codes.codes, codes.scales, c, q.astype(np.float64), codes.q_max, out)
    with pytest.raises(ValueError, match="shapes do not fit"):
        scan(codes.codes, codes.scales, c, q, codes.q_max, out)
    with pytest.raises(ValueError, match="q_max must be in 1..32767"):
        scan(codes.codes, codes.scales, c, q, 0, np.empty(513, np.float32))
    with pytest.raises(ValueError, match="excluded index 513 is outside 0..512"):
        codes.topk(q, 3, np.array([5, 513]))
    with pytest.raises(ValueError, match="'excluded' must be a 1-d array of int32 or int64"):
        quantized._scan.topk(codes.codes, codes.scales, c, codes.errors, codes.vectors, q, codes.q_max,
                             np.zeros((1, 1), np.int64), 3, codes.bounds, 10, np.empty(3, np.int64),
                             np.empty(3, np.float32))
    topk = quantized._scan.topk

    def raw(bounds, limit):
        idx, val = np.empty(3, np.int64), np.empty(3, np.float32)
        return topk(codes.codes, codes.scales, c, codes.errors, codes.vectors, q, codes.q_max, np.arange(100), 3,
                    bounds, limit, idx, val), idx, val

    answer, idx, _ = raw(codes.bounds, 2 ** 62)  # a limit beyond the items is the number of items
    assert answer == 3 and idx.tolist() == codes.topk(q, 3, np.arange(100))[0].tolist()
    for broken in ((np.nan, 1.0, 1.0), (np.inf, 1.0, 1.0), (1e300, 1e300, 1.0)):  # a bound that is no bound
        assert raw(broken, 100)[0] is None
    with pytest.raises(ValueError, match=r"vectors \(513, 7\) must match"):
        quantized._scan.topk(codes.codes, codes.scales, c, codes.errors, codes.vectors[:, :7].copy(), q,
                             codes.q_max, np.zeros(0, np.int64), 3, codes.bounds, 10, np.empty(3, np.int64),
                             np.empty(3, np.float32))


def engine_with(n: int, d: int, n_users: int = 30, seed: int = 0) -> Engine:
    rng = np.random.default_rng(seed)
    items, users = profile("mf", n, d, rng), rng.normal(size=(n_users, d)).astype(np.float32)
    seen = sp.random(n_users, n, density=0.02, format="csr", random_state=seed, dtype=np.float32)
    return Engine(items, users, IdMap([f"u{i}" for i in range(n_users)]), IdMap([f"i{j}" for j in range(n)]),
                  seen=seen)


def test_engine_single_queries_go_through_the_codes_and_equal_the_batch_answer(monkeypatch) -> None:
    engine = engine_with(MIN_CELLS // 64 + 10, 64)
    assert isinstance(engine.retriever.item_codes, Int8Items)
    calls = []
    original = Int8Items.topk
    monkeypatch.setattr(Int8Items, "topk", lambda self, *a: calls.append(1) or original(self, *a))
    batch_idx, batch_val = engine.recommend_indices(np.arange(30), k=15)
    assert not calls  # a batch is one GEMM
    for u in range(30):
        idx, val = engine.recommend_indices(np.array([u]), k=15)
        np.testing.assert_array_equal(idx[0], batch_idx[u])
        np.testing.assert_allclose(val[0], batch_val[u], rtol=1e-5)
    assert len(calls) == 30
    engine.prepare_serving()
    assert "item_columns" not in vars(engine.retriever)  # no float32 column copy where the codes answer


def test_engine_without_the_extension_or_for_small_catalogues_scores_in_float32(monkeypatch) -> None:
    small = engine_with(100, 16)
    assert small.retriever.item_codes is None
    big = engine_with(MIN_CELLS // 64 + 10, 64)
    expected = big.recommend_indices(np.arange(5), k=10)
    monkeypatch.setattr(quantized, "_scan", None)
    assert Int8Items.build(big.item_vectors) is None
    with pytest.raises(RuntimeError, match="not built"):
        Int8Items(big.item_vectors)
    plain = engine_with(MIN_CELLS // 64 + 10, 64)
    assert plain.retriever.item_codes is None
    plain.prepare_serving()
    assert "item_columns" in vars(plain.retriever)
    for u in range(5):
        idx, _ = plain.recommend_indices(np.array([u]), k=10)
        np.testing.assert_array_equal(idx[0], expected[0][u])
