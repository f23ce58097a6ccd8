"""The spectral filter (GF-CF): the contract, the paper's equations on hand-made data, and both SVD paths."""
from __future__ import annotations

import numpy as np
import pytest
from contract import RecommenderContract

from recsys.data import from_arrays
from recsys.exceptions import DataValidationError
from recsys.models import SpectralCF, spectral


class TestSpectral(RecommenderContract):
    def make_model(self):
        return SpectralCF(factors=32, low_pass=8)


def random_log(n_users: int = 30, n_items: int = 20, density: float = 0.25, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float64)
    x[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0  # every user has an item
    x[rng.integers(0, n_users, n_items), np.arange(n_items)] = 1.0  # every item has a user
    u, i = np.nonzero(x)
    inter = from_arrays(np.array([f"u{k:03d}" for k in u]), np.array([f"i{k:03d}" for k in i]))
    assert inter.users.ids.tolist() == sorted(inter.users.ids.tolist())
    return x, inter


def gf_cf_scores(x: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """Shen et al. 2021, eq. for GF-CF, written straight from the paper with a dense SVD:
    s_u = r_u (R~^T R~ + alpha D_I^-1/2 U_k U_k^T D_I^1/2), R~ = D_U^-1/2 R D_I^-1/2."""
    du, di = x.sum(axis=1), x.sum(axis=0)
    norm = x / np.sqrt(du)[:, None] / np.sqrt(di)[None, :]
    _, _, vt = np.linalg.svd(norm, full_matrices=False)
    vk = vt[:k].T
    return x @ (norm.T @ norm + alpha * np.diag(di ** -0.5) @ vk @ vk.T @ np.diag(di ** 0.5))


@pytest.mark.parametrize("exact_side", [4096, 0], ids=["gram-eigh", "randomized-svd"])
def test_scores_are_the_papers_gf_cf_at_full_rank(exact_side, monkeypatch):
    monkeypatch.setattr(spectral, "EXACT_SIDE", exact_side)
    x, inter = random_log()
    model = SpectralCF(factors=64, low_pass=5, alpha=0.3).fit(inter)
    scores = model.user_vectors_ @ model.item_vectors_.T
    np.testing.assert_allclose(scores, gf_cf_scores(x, 5, 0.3), rtol=1e-4, atol=1e-5)


def test_truncation_keeps_the_top_of_the_spectrum():
    """A basis of 8 of the 20 singular vectors: the linear filter is P~'s best rank-8 approximation."""
    x, inter = random_log()
    du, di = x.sum(axis=1), x.sum(axis=0)
    norm = x / np.sqrt(du)[:, None] / np.sqrt(di)[None, :]
    _, s, vt = np.linalg.svd(norm, full_matrices=False)
    want = x @ (vt[:8].T * s[:8] ** 2) @ vt[:8]
    model = SpectralCF(factors=8, low_pass=0).fit(inter)
    np.testing.assert_allclose(model.user_vectors_ @ model.item_vectors_.T, want, rtol=1e-4, atol=1e-5)
    assert model.item_vectors_.shape == (20, 8)


def test_power_sharpens_the_linear_filter():
    x, inter = random_log(seed=1)
    du, di = x.sum(axis=1), x.sum(axis=0)
    norm = x / np.sqrt(du)[:, None] / np.sqrt(di)[None, :]
    p = norm.T @ norm
    model = SpectralCF(factors=64, low_pass=0, power=2.0).fit(inter)
    np.testing.assert_allclose(model.user_vectors_ @ model.item_vectors_.T, x @ p @ p, rtol=1e-4, atol=1e-5)


def test_a_folded_in_history_reproduces_the_trained_user():
    _, inter = random_log(seed=2)
    model = SpectralCF(factors=64, low_pass=5).fit(inter)
    engine = model.engine_
    seen = inter.matrix(binary=True).tocsr()
    for u in (0, 7, 29):
        history = seen.indices[seen.indptr[u]:seen.indptr[u + 1]]
        np.testing.assert_allclose(engine.fold_in(np.concatenate([history, history[:1]])), model.user_vectors_[u],
                                   rtol=1e-5, atol=1e-6)


def test_the_projection_travels_in_the_bundle(tmp_path):
    _, inter = random_log(seed=3)
    model = SpectralCF(factors=16, low_pass=4).fit(inter)
    loaded = SpectralCF.load(model.save(tmp_path / "b"))
    history = ["i001", "i004", "i011"]
    np.testing.assert_array_equal(loaded.recommend_for_history(history, k=5)[0],
                                  model.recommend_for_history(history, k=5)[0])
    assert loaded.engine_.foldin.method == "linear"


def test_the_same_seed_gives_the_same_vectors(monkeypatch):
    monkeypatch.setattr(spectral, "EXACT_SIDE", 0)
    _, inter = random_log(n_users=60, n_items=40, seed=4)
    a, b = (SpectralCF(factors=8, low_pass=4, seed=1).fit(inter) for _ in range(2))
    np.testing.assert_array_equal(a.item_vectors_, b.item_vectors_)


def test_bad_parameters_are_named():
    _, inter = random_log()
    with pytest.raises(DataValidationError, match="The 'normalization' parameter of SpectralCF must be a float"):
        SpectralCF(normalization=2.0).fit(inter)
    with pytest.raises(DataValidationError, match="'factors' parameter of SpectralCF must be an int >= 1. Got 0"):
        SpectralCF(factors=0).fit(inter)


def test_one_decomposition_serves_trials_that_need_no_more_vectors(monkeypatch):
    """A tuner's trials differ in alpha, power and how many vectors they use: the SVD of the same matrix is
    reused when it holds enough vectors, and the answer is the one a fresh fit gives."""
    _, inter = random_log(seed=5)
    calls = []
    real = spectral.top_singular
    monkeypatch.setattr(spectral, "top_singular", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    spectral.forget()
    wide = SpectralCF(factors=12, low_pass=4).fit(inter)
    narrow = SpectralCF(factors=6, low_pass=4, alpha=1.0).fit(inter)
    assert calls == [12], "the second fit reused the first decomposition"
    SpectralCF(factors=16, low_pass=4).fit(inter)
    assert calls == [12, 16], "more vectors than kept: decomposed again"
    spectral.forget()
    fresh = SpectralCF(factors=6, low_pass=4, alpha=1.0).fit(inter)
    np.testing.assert_allclose(narrow.user_vectors_ @ narrow.item_vectors_.T,
                               fresh.user_vectors_ @ fresh.item_vectors_.T, rtol=1e-5, atol=1e-6)
    assert wide.item_vectors_.shape[1] == 16
