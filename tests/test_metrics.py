"""Ranking metrics: hand-computed cases, input validation and a per-user reference implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.metrics import PER_USER_METRICS, list_ndcg, per_user_metrics, ranking_metrics


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary CSR with one row per user listing its relevant items."""
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int64)
    return sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(rows), n_items))


# --------------------------------------------------------------------------- hand-computed cases


def test_single_user_hand_computed() -> None:
    # relevant {2, 5}, ranking [5, 1, 2]: hits at positions 0 and 2.
    m = ranking_metrics(np.array([[5, 1, 2]]), csr([[2, 5]], 10), k=3)
    assert m["users"] == 1
    assert m["precision@3"] == pytest.approx(2 / 3)  # 2 hits / K=3
    assert m["recall@3"] == pytest.approx(1.0)  # 2 hits / min(3, 2)
    # DCG = 1/log2(2) + 1/log2(4); ideal DCG over min(3, 2) = 2 positions = 1/log2(2) + 1/log2(3)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    # AP = (precision@1 + precision@3) / min(3, 2) = (1/1 + 2/3) / 2
    assert m["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["hit_rate@3"] == 1.0
    assert m["coverage@3"] == pytest.approx(3 / 10)  # items {5, 1, 2} of 10


def test_more_relevant_than_k_uses_k_as_denominator() -> None:
    # relevant {0..5} (6 items), ranking [0, 9, 1], K=3: hits at positions 0 and 2.
    m = ranking_metrics(np.array([[0, 9, 1]]), csr([[0, 1, 2, 3, 4, 5]], 10), k=3)
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["recall@3"] == pytest.approx(2 / 3)  # 2 hits / min(3, 6) = 2/3
    # ideal DCG over min(3, 6) = 3 positions: 1 + 1/log2(3) + 1/log2(4)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    assert m["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 3)  # (P@1 + P@3) / 3


def test_users_without_relevant_items_are_skipped() -> None:
    # user 0: relevant {1}, ranking [1, 2] -> all metrics 1 except precision@2 = 1/2.
    # user 1: no relevant item, ranking [3, 4] -> skipped (also from coverage).
    # user 2: relevant {7}, ranking [5, 6] -> all metrics 0.
    top = np.array([[1, 2], [3, 4], [5, 6]])
    rel = csr([[1], [], [7]], 8)
    m = ranking_metrics(top, rel, k=2)
    assert m["users"] == 2
    assert m["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@2"] == pytest.approx((1 + 0) / 2)
    assert m["ndcg@2"] == pytest.approx((1 + 0) / 2)
    assert m["map@2"] == pytest.approx((1 + 0) / 2)
    assert m["hit_rate@2"] == pytest.approx(1 / 2)
    assert m["coverage@2"] == pytest.approx(4 / 8)  # items {1, 2, 5, 6}, not 3 or 4

    per_user = per_user_metrics(top, rel, k=2)
    assert set(per_user) == {f"{name}@2" for name in PER_USER_METRICS}
    np.testing.assert_allclose(per_user["recall@2"], [1.0, np.nan, 0.0])
    np.testing.assert_allclose(per_user["precision@2"], [0.5, np.nan, 0.0])


def test_no_evaluable_user_gives_nan_averages() -> None:
    m = ranking_metrics(np.array([[0, 1]]), csr([[]], 4), k=2)
    assert m["users"] == 0
    assert math.isnan(m["ndcg@2"]) and math.isnan(m["precision@2"])
    assert m["coverage@2"] == 0.0


def test_padding_is_never_a_hit_nor_covered() -> None:
    # relevant {0, 3} of 4 items (item 3 is the last column: -1 must not match it through wraparound).
    # user 0 ranking [0, -1, -1]: one hit at position 0.
    # user 1 relevant {3}, ranking [-1, -1, -1]: no hit.
    top = np.array([[0, -1, -1], [-1, -1, -1]])
    rel = csr([[0, 3], [3]], 4)
    per_user = per_user_metrics(top, rel, k=3)
    np.testing.assert_allclose(per_user["precision@3"], [1 / 3, 0.0])  # padding counts in K
    np.testing.assert_allclose(per_user["recall@3"], [1 / 2, 0.0])  # 1 hit / min(3, 2)
    np.testing.assert_allclose(per_user["hit_rate@3"], [1.0, 0.0])
    # ndcg user 0: 1 / (1 + 1/log2(3)); map user 0: (1/1) / 2
    np.testing.assert_allclose(per_user["ndcg@3"], [1 / (1 + 1 / math.log2(3)), 0.0])
    np.testing.assert_allclose(per_user["map@3"], [0.5, 0.0])
    m = ranking_metrics(top, rel, k=3)
    assert m["coverage@3"] == pytest.approx(1 / 4)  # only item 0


def test_perfect_ranking_scores_one() -> None:
    # each user's relevant items fill the top of its ranking, in any order.
    top = np.array([[4, 2, 7, 0], [1, 3, 5, 6], [9, 8, 6, 5]])
    rel = csr([[2, 4], [1, 3, 5, 6], [9]], 10)
    m = ranking_metrics(top, rel, k=[1, 2, 4])
    for kk in (1, 2, 4):
        assert m[f"ndcg@{kk}"] == pytest.approx(1.0)
        assert m[f"recall@{kk}"] == pytest.approx(1.0)
        assert m[f"map@{kk}"] == pytest.approx(1.0)
        assert m[f"hit_rate@{kk}"] == 1.0


def test_coverage_over_several_users() -> None:
    # top@1 items {0, 0, 3} -> 2 distinct; top@2 items {0, 1, 0, 2, 3, 1} -> 4 distinct.
    top = np.array([[0, 1], [0, 2], [3, 1]])
    rel = csr([[0], [5], [9]], 10)
    m = ranking_metrics(top, rel, k=[1, 2])
    assert m["coverage@1"] == pytest.approx(2 / 10)
    assert m["coverage@2"] == pytest.approx(4 / 10)
    # a larger catalogue than the relevant matrix' width
    assert ranking_metrics(top, rel, k=2, n_items=20)["coverage@2"] == pytest.approx(4 / 20)


def test_multiple_k_in_one_call() -> None:
    # relevant {2, 5}, ranking [5, 1, 2, 3]
    m = ranking_metrics(np.array([[5, 1, 2, 3]]), csr([[2, 5]], 10), k=(4, 1, 3))
    expected_keys = {f"{name}@{kk}" for kk in (1, 3, 4) for name in (*PER_USER_METRICS, "coverage")}
    assert set(m) == expected_keys | {"users"}
    # k=1: one hit in one slot; recall denominator min(1, 2) = 1
    assert m["precision@1"] == m["recall@1"] == m["ndcg@1"] == m["map@1"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["precision@4"] == pytest.approx(2 / 4)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["map@4"] == pytest.approx(m["map@3"])  # position 3 is a miss
    assert m["coverage@1"] == pytest.approx(1 / 10)


def test_stored_values_and_layout_are_ignored() -> None:
    # explicit zeros are not relevant; unsorted indices, duplicates, other values and
    # sparse arrays / other formats all behave like binary CSR.
    top = np.array([[5, 1, 2]], dtype=np.int32)
    base = ranking_metrics(top, csr([[2, 5]], 10), k=3)
    messy = sp.csr_matrix((np.array([0.0, 3.5, 2.0, 2.0]), np.array([1, 5, 2, 2]), [0, 4]), shape=(1, 10))
    assert ranking_metrics(top, messy, k=3) == pytest.approx(base)
    assert ranking_metrics(top, sp.csr_array(csr([[5, 2]], 10)), k=3) == pytest.approx(base)
    assert ranking_metrics(top, csr([[2, 5]], 10).tocoo(), k=3) == pytest.approx(base)
    assert messy.nnz == 4  # the caller's matrix is not modified


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("k", [0, 4, -1, [1, 5], [], 2.0, True, "3", None])
def test_bad_k(k: object) -> None:
    with pytest.raises(ValueError, match="k"):
        ranking_metrics(np.array([[0, 1, 2]]), csr([[0]], 5), k=k)


def test_k_error_message_names_value_and_fix() -> None:
    with pytest.raises(ValueError, match=r"k=4 .*top_items.shape\[1\]=3"):
        per_user_metrics(np.array([[0, 1, 2]]), csr([[0]], 5), k=4)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="2 rows .*shape \\(3, 5\\)"):
        ranking_metrics(np.array([[0, 1], [2, 3]]), csr([[0], [1], [2]], 5), k=1)


def test_bad_top_items() -> None:
    rel = csr([[0]], 5)
    with pytest.raises(ValueError, match="2-D integer"):
        ranking_metrics(np.array([0, 1]), rel, k=1)
    with pytest.raises(ValueError, match="2-D integer"):
        ranking_metrics(np.array([[0.0, 1.0]]), rel, k=1)
    with pytest.raises(ValueError, match="must lie in"):
        ranking_metrics(np.array([[0, 5]]), rel, k=1)
    with pytest.raises(ValueError, match="must lie in"):
        ranking_metrics(np.array([[0, -2]]), rel, k=1)
    with pytest.raises(ValueError, match="more than once"):
        ranking_metrics(np.array([[1, 0, 1]]), rel, k=3)
    with pytest.raises(TypeError, match="scipy.sparse"):
        ranking_metrics(np.array([[0, 1]]), np.ones((1, 5)), k=1)  # type: ignore[arg-type]


def test_repeats_beyond_k_and_repeated_padding_are_fine() -> None:
    m = ranking_metrics(np.array([[0, -1, -1, 1, 1]]), csr([[0]], 5), k=3)
    assert m["recall@3"] == 1.0


def test_bad_n_items() -> None:
    with pytest.raises(ValueError, match="n_items=3"):
        ranking_metrics(np.array([[0, 1]]), csr([[0]], 5), k=1, n_items=3)


# --------------------------------------------------------------------------- randomized reference


def reference_metrics(top: np.ndarray, rel: sp.csr_matrix, k: int) -> dict[str, list[float]]:
    """Straightforward per-user loop, written from the definitions."""
    out: dict[str, list[float]] = {name: [] for name in PER_USER_METRICS}
    for u in range(top.shape[0]):
        relevant = set(rel.indices[rel.indptr[u] : rel.indptr[u + 1]][rel.data[rel.indptr[u] : rel.indptr[u + 1]] != 0])
        if not relevant:
            for values in out.values():
                values.append(math.nan)
            continue
        denom = min(k, len(relevant))
        hits, dcg, ap = 0, 0.0, 0.0
        for i, item in enumerate(top[u, :k]):
            if item >= 0 and int(item) in relevant:
                hits += 1
                dcg += 1 / math.log2(i + 2)
                ap += hits / (i + 1)
        out["precision"].append(hits / k)
        out["recall"].append(hits / denom)
        out["ndcg"].append(dcg / sum(1 / math.log2(i + 2) for i in range(denom)))
        out["map"].append(ap / denom)
        out["hit_rate"].append(float(hits > 0))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items, width = 300, 60, 15
    # rankings: distinct items per row, random-length -1 padding at the end
    top = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :width]
    lengths = rng.integers(0, width + 1, n_users)
    top[np.arange(width)[None, :] >= lengths[:, None]] = -1
    # relevance: dense-ish so hits are common; about 1 in 10 users has none; last column included
    rel = sp.random(n_users, n_items, density=0.15, format="csr", random_state=seed)
    rel = sp.csr_matrix(rel.toarray() * (rng.random(n_users) > 0.1)[:, None])
    ks = [1, 5, width]

    per_user = per_user_metrics(top, rel, k=ks)
    summary = ranking_metrics(top, rel, k=ks)
    evaluated = np.diff(rel.indptr) > 0
    assert summary["users"] == evaluated.sum()
    for kk in ks:
        ref = reference_metrics(top, rel, kk)
        for name in PER_USER_METRICS:
            np.testing.assert_allclose(per_user[f"{name}@{kk}"], ref[name], rtol=1e-12, atol=1e-12)
            assert summary[f"{name}@{kk}"] == pytest.approx(np.nanmean(ref[name]))
        covered = {int(i) for i in top[evaluated, :kk].ravel() if i >= 0}
        assert summary[f"coverage@{kk}"] == pytest.approx(len(covered) / n_items)


def test_blocks_cover_all_users(monkeypatch: pytest.MonkeyPatch) -> None:
    # force tiny user blocks so the block boundaries are exercised against the reference
    from recsys import metrics

    monkeypatch.setattr(metrics, "_BLOCK_CELLS", 7)
    rng = np.random.default_rng(3)
    top = np.argsort(rng.random((50, 20)), axis=1)[:, :4]
    rel = sp.random(50, 20, density=0.2, format="csr", random_state=3)
    per_user = per_user_metrics(top, rel, k=4)
    ref = reference_metrics(top, rel, 4)
    for name in PER_USER_METRICS:
        np.testing.assert_allclose(per_user[f"{name}@4"], ref[name], rtol=1e-12)


# ------------------------------------------------------------------------------------- beyond accuracy
def test_beyond_accuracy_by_hand():
    from recsys.metrics import beyond_accuracy

    popularity = np.array([6.0, 3.0, 1.0, 0.0])  # head (80% of 10 interactions): items 0 and 1
    top = np.array([[0, 1], [2, 3], [3, -1]])
    vectors = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 1.0]])
    m = beyond_accuracy(top, popularity, [1, 2], item_vectors=vectors, n_users=8)
    info = -np.log2(np.array([6, 3, 1, 1]) / 8)  # unseen items count as one user
    assert m["novelty@2"] == pytest.approx(np.mean([(info[0] + info[1]) / 2, (info[2] + info[3]) / 2, info[3]]))
    assert m["long_tail@1"] == pytest.approx(2 / 3) and m["long_tail@2"] == pytest.approx((0 + 1 + 1) / 3)
    assert m["arp@2"] == pytest.approx(np.mean([4.5, 0.5, 0.0]))
    cos_23 = 1 / np.sqrt(2)
    assert m["diversity@2"] == pytest.approx(np.mean([0.0, 1 - cos_23])), "one-item lists have no pairs"
    assert np.isnan(m["diversity@1"])


def test_popular_lists_are_less_novel_than_random_ones():
    from recsys.metrics import beyond_accuracy

    rng = np.random.default_rng(0)
    popularity = np.sort(rng.pareto(1.0, 500) + 1)[::-1]
    popular = np.tile(np.arange(10), (50, 1))
    random = np.stack([rng.choice(500, 10, replace=False) for _ in range(50)])
    a, b = (beyond_accuracy(t, popularity, 10, n_users=1000) for t in (popular, random))
    assert a["novelty@10"] < b["novelty@10"] and a["arp@10"] > b["arp@10"]
    assert a["long_tail@10"] == 0.0 < b["long_tail@10"]


def test_beyond_accuracy_rejects_a_k_past_the_lists():
    from recsys.metrics import beyond_accuracy

    with pytest.raises(ValueError, match="k must be between 1 and top_items.shape"):
        beyond_accuracy(np.zeros((2, 3), int), np.ones(4), 5)


def test_diversity_is_the_same_in_blocks(monkeypatch):
    from recsys import metrics

    rng = np.random.default_rng(1)
    top = np.stack([rng.choice(50, 6, replace=False) for _ in range(40)])
    top[3, 2:] = -1
    vectors = rng.normal(size=(50, 7))
    whole = metrics.beyond_accuracy(top, np.ones(50), 6, item_vectors=vectors)["diversity@6"]
    monkeypatch.setattr(metrics, "_BLOCK_CELLS", 3)  # 3 * 16 floats: one user per block
    assert metrics.beyond_accuracy(top, np.ones(50), 6, item_vectors=vectors)["diversity@6"] == \
        pytest.approx(whole, rel=1e-6)


def test_list_ndcg_is_the_per_user_ndcg_of_one_list():
    top = np.array([[3, 1, 4, 0]])
    relevant = sp.csr_matrix(np.array([[0, 1, 0, 1, 0, 1]], dtype=float))  # items 1, 3, 5
    expected = per_user_metrics(top, relevant, 4)["ndcg@4"][0]
    assert list_ndcg(np.array([1.0, 1.0, 0.0, 0.0]), 3) == pytest.approx(expected)
    assert list_ndcg(np.array([]), 3) == 0 and list_ndcg(np.array([1.0]), 0) == 0
