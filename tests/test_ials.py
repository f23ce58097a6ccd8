"""IALS: the contract, its parameters, the loss it minimises, the batched solves, fold-in == training, seeding."""
from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from contract import RecommenderContract

from recsys.data import Interactions, from_arrays, temporal_split
from recsys.evaluation import evaluate
from recsys.exceptions import DataValidationError
from recsys.models import Popularity
from recsys.models.ials import IALS, confidence, objective, solve_rows
from recsys.models.loop import stale_limit


def fast_ials(**overrides) -> IALS:
    params = {"factors": 16, "epochs": 6, "reg": 0.01, "unobserved_weight": 0.5, "progress": False,
              "device": "cpu", "seed": 0}
    return IALS(**{**params, **overrides})


class TestIALS(RecommenderContract):
    def make_model(self):
        return fast_ials()


class TestIALSCholeskyWithWeights(RecommenderContract):
    def make_model(self):
        return fast_ials(solver="cholesky", confidence="weight", alpha=0.5)


@pytest.fixture(scope="module")
def tiny() -> Interactions:
    """25 users x 18 items, ratings as weights, some pairs repeated (summed when read)."""
    rng = np.random.default_rng(3)
    n = 160
    users = rng.integers(0, 25, n)
    items = np.minimum(rng.geometric(0.12, n) - 1, 17)  # a long tail: a few items with many users
    return from_arrays([f"u{u:02d}" for u in users], [f"i{i:02d}" for i in items],
                       rng.integers(1, 11, n) / 2.0)


# --------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("param, value, expected", [
    ("factors", 0, "The 'factors' parameter of IALS must be an int >= 1. Got 0."),
    ("reg", 0.0, "The 'reg' parameter of IALS must be a float > 0. Got 0.0."),
    ("reg_exponent", 1.5, "The 'reg_exponent' parameter of IALS must be a float >= 0 and <= 1. Got 1.5."),
    ("unobserved_weight", -0.1, "must be a float >= 0. Got -0.1."),
    ("confidence", "linear", "must be one of 'binary', 'weight', 'log', 'power'. Got 'linear'."),
    ("solver", "lu", "must be one of 'cholesky', 'cg'. Got 'lu'."),
    ("init_std", 0.0, "The 'init_std' parameter of IALS must be a float > 0 or None. Got 0.0."),
    ("epochs", 2.0, "The 'epochs' parameter of IALS must be an int >= 1. Got 2.0."),
])
def test_invalid_params_are_named(synthetic, param, value, expected):
    with pytest.raises(DataValidationError) as err:
        fast_ials(**{param: value}).fit(synthetic)
    assert expected in str(err.value)


def test_weight_confidence_refuses_negative_weights():
    inter = from_arrays(["a", "a", "b"], ["x", "y", "x"], np.array([1.0, -1.0, 2.0]))
    with pytest.raises(DataValidationError, match="negative weight"):
        fast_ials(confidence="weight").fit(inter)
    fast_ials(confidence="binary").fit(inter)  # binary ignores the values


def test_confidence_mappings():
    w = np.array([0.0, 1.0, 9.0])
    np.testing.assert_array_equal(confidence(w, "binary"), [1, 1, 1])
    np.testing.assert_allclose(confidence(w, "weight", alpha=2.0), [1, 3, 19])
    np.testing.assert_allclose(confidence(w, "log", alpha=2.0, epsilon=0.5), 1 + 2 * np.log1p(w / 0.5), rtol=1e-6)
    np.testing.assert_allclose(confidence(w, "power", alpha=0.5, epsilon=4.0), [0, 0.5, 1.5])
    np.testing.assert_array_equal(confidence(w[1:], "power", alpha=0.0), [1, 1])


# ------------------------------------------------------------------------------------------ the loss
def dense_objective(model: IALS, inter: Interactions) -> float:
    """The iALS loss of the module docstring, computed over the full users x items matrix."""
    W = model.user_vectors_.astype(np.float64)
    H = model.item_vectors_.astype(np.float64)
    m = inter.matrix()  # duplicates summed
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    observed = np.zeros(m.shape, bool)
    observed[rows, m.indices] = True
    C = np.zeros(m.shape)
    C[rows, m.indices] = confidence(m.data, model.confidence, model.alpha, model.epsilon)
    scores = W @ H.T
    a0, nu, reg = model.unobserved_weight, model.reg_exponent, model.reg
    lam_u = reg * (observed.sum(1) + a0 * inter.n_items) ** nu
    lam_i = reg * (observed.sum(0) + a0 * inter.n_users) ** nu
    return float((C * (scores - 1) ** 2)[observed].sum() + a0 * (scores ** 2).sum()
                 + lam_u @ (W ** 2).sum(1) + lam_i @ (H ** 2).sum(1))


@pytest.mark.parametrize("settings", [
    {"confidence": "weight", "alpha": 0.7, "reg_exponent": 0.5},
    {"confidence": "binary", "reg_exponent": 0.0, "reg": 0.5},
    {"confidence": "power", "alpha": 1.0, "epsilon": 2.0, "reg_exponent": 0.8},
])
def test_objective_never_increases_across_sweeps(tiny, settings):
    """Each sweep minimises the loss over items, then users, so it cannot go up; the loss reported per epoch is
    that loss (divided by the number of pairs)."""
    losses = []
    for epochs in range(1, 7):
        model = fast_ials(factors=6, epochs=epochs, unobserved_weight=0.2, solver="cholesky", **settings).fit(tiny)
        losses.append(dense_objective(model, tiny))
        reported = model.exported_.extra["history"][-1]["loss"] * tiny.matrix().nnz
        assert reported == pytest.approx(losses[-1], rel=1e-4)
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("confidence", ["log", "binary"])
def test_conjugate_gradient_sweeps_never_increase_the_objective(tiny, confidence):
    """CG from the current vectors only descends; the exported users are then solved exactly, lower still."""
    model = fast_ials(factors=6, epochs=8, unobserved_weight=0.2, solver="cg", cg_steps=2, confidence=confidence,
                      alpha=2.0).fit(tiny)
    losses = [h["loss"] for h in model.exported_.extra["history"]]
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(losses)), losses
    assert dense_objective(model, tiny) <= losses[-1] * tiny.matrix().nnz * (1 + 1e-6)


# ------------------------------------------------------------------------------------------- solves
def reference_solve(F: np.ndarray, m: sp.csr_matrix, reg: float, nu: float, a0: float) -> np.ndarray:
    """One row at a time, in float64: (X^T C X + a0 F^T F + lambda_r I) x = X^T c."""
    out = np.zeros((m.shape[0], F.shape[1]))
    for r in range(m.shape[0]):
        cols, c = m.indices[m.indptr[r]:m.indptr[r + 1]], m.data[m.indptr[r]:m.indptr[r + 1]]
        if len(cols):
            X = F[cols]
            lam = reg * (len(cols) + a0 * len(F)) ** nu
            out[r] = np.linalg.solve(X.T @ (c[:, None] * X) + a0 * F.T @ F + lam * np.eye(F.shape[1]), X.T @ c)
    return out


@pytest.mark.parametrize("chunk_bytes", [None, 4 * 8 * 8, 300])  # default; one system per chunk; sliced rows
def test_batched_solve_equals_a_per_row_reference(chunk_bytes):
    """Rows shorter than k (push-through solve), longer (k x k Cholesky), empty (zero), in chunks or not."""
    rng = np.random.default_rng(0)
    k, n_cols = 8, 60
    density = np.linspace(0.0, 0.5, 40)[:, None]  # rows from empty to ~30 entries
    dense = (rng.random((40, n_cols)) < density) * rng.uniform(1, 3, (40, n_cols))
    m = sp.csr_matrix(dense.astype(np.float32))
    m.data[::9] = 0  # a stored pair with confidence 0 ('power' of a zero weight) adds nothing but counts for reg
    assert np.diff(m.indptr).min() == 0 and (np.diff(m.indptr) < k).any() and (np.diff(m.indptr) > k).any()
    F = rng.normal(size=(n_cols, k)).astype(np.float32)
    expected = reference_solve(F.astype(np.float64), m, 0.3, 0.5, 0.1)
    got = solve_rows(torch.as_tensor(F), m.indptr, m.indices, m.data, reg=0.3, reg_exponent=0.5,
                     unobserved_weight=0.1, chunk_bytes=chunk_bytes).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    for kernel in ("sparse", "batched"):  # CG converges to the same solution, as sparse products or batches
        cg = solve_rows(torch.as_tensor(F), m.indptr, m.indices, m.data, reg=0.3, reg_exponent=0.5,
                        unobserved_weight=0.1, solver="cg", cg_steps=3 * k, current=torch.ones(40, k),
                        chunk_bytes=chunk_bytes, cg_kernel=kernel).numpy()
        np.testing.assert_allclose(cg, expected, rtol=1e-3, atol=1e-4, err_msg=kernel)


@pytest.mark.parametrize("kernel", ["sparse", "batched"])
def test_cg_with_a_tolerance_stops_once_converged_at_the_exact_solution(kernel, caplog):
    """tol: CG stops when every row's residual is within tol of its right-hand side, well before the cap, at
    the exact solution (the export's solve to convergence)."""
    rng = np.random.default_rng(3)
    m = sp.random(200, 90, density=0.1, format="csr", random_state=4, dtype=np.float32)
    m.data = 1 + 3 * m.data
    F = rng.normal(size=(90, 12)).astype(np.float32)
    expected = reference_solve(F.astype(np.float64), m, 0.2, 1.0, 0.1)
    with caplog.at_level(logging.DEBUG, logger="recsys"):
        got = solve_rows(torch.as_tensor(F), m.indptr, m.indices, m.data, reg=0.2, reg_exponent=1.0,
                         unobserved_weight=0.1, solver="cg", cg_steps=1000, tol=1e-6, cg_kernel=kernel,
                         current=torch.zeros(200, 12)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    steps = [int(r.getMessage().split()[3]) for r in caplog.records if "CG converged" in r.getMessage()]
    assert steps and max(steps) < 100, steps


def test_sparse_and_batched_cg_take_the_same_steps():
    """Three CG steps from the same start: the sparse-product kernel and the padded batches agree to float
    rounding (they are one algorithm; only the order of sums differs)."""
    rng = np.random.default_rng(1)
    m = sp.random(300, 120, density=0.02, format="csr", random_state=2, dtype=np.float32)  # some rows empty
    m.data = 1 + 3 * m.data
    F = torch.as_tensor(rng.normal(size=(120, 16)).astype(np.float32))
    start = torch.as_tensor(rng.normal(size=(300, 16)).astype(np.float32))
    args = {"reg": 0.05, "reg_exponent": 1.0, "unobserved_weight": 0.1, "solver": "cg", "cg_steps": 3,
            "current": start}
    sparse = solve_rows(F, m.indptr, m.indices, m.data, cg_kernel="sparse", **args)
    batched = solve_rows(F, m.indptr, m.indices, m.data, cg_kernel="batched", **args)
    assert (np.diff(m.indptr) == 0).any() and not torch.equal(sparse, start)
    torch.testing.assert_close(sparse, batched, rtol=1e-4, atol=1e-5)


def test_chunks_pad_no_row_to_more_than_pad_growth_times_its_length():
    """A long-tailed catalogue: thousands of short rows and a few long ones never share a padded chunk."""
    from recsys.models.ials import PAD_GROWTH, padded_chunks

    lengths = np.concatenate([np.full(3000, 2), np.arange(3, 400)])
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.zeros(indptr[-1], np.int64)
    rows = np.argsort(lengths, kind="stable")
    seen = []
    for chunk, idx, _ in padded_chunks(indptr, indices, np.ones(indptr[-1], np.float32), rows, 8, 8 * 2**20,
                                 k_by_k=False):
        assert idx.shape[1] <= PAD_GROWTH * lengths[chunk].min()
        seen.append(chunk)
    np.testing.assert_array_equal(np.concatenate(seen), rows)


# ------------------------------------------------------------------------------------------- fold-in
@pytest.mark.parametrize("factors, settings", [
    (16, {"confidence": "binary", "solver": "cholesky"}),  # users have fewer items than factors: push-through
    (4, {"confidence": "weight", "alpha": 0.5, "reg_exponent": 0.5, "solver": "cholesky"}),  # more: k x k
    (8, {"confidence": "log", "alpha": 2.0, "epsilon": 0.5, "reg_exponent": 0.0, "reg": 2.0}),
    (8, {"confidence": "power", "alpha": 1.0, "epsilon": 2.0, "reg_exponent": 0.7, "unobserved_weight": 2.0,
         "solver": "cholesky"}),
    (8, {"solver": "cg", "confidence": "weight"}),  # CG sweeps, then one exact user solve for the export
])
def test_fold_in_of_a_training_history_reproduces_the_trained_vector(synthetic_split, factors, settings):
    """The last half-step of training is the user solve that Engine.fold_in repeats in numpy at serving time."""
    train, _ = synthetic_split
    model = fast_ials(factors=factors, **settings).fit(train)
    seen, engine = train.matrix(), model.engine_
    for u in range(0, train.n_users, 7):
        row = seen[u]
        folded = engine.fold_in(row.indices, row.data)
        np.testing.assert_allclose(folded, model.user_vectors_[u], rtol=2e-3, atol=2e-4 * np.abs(folded).max())
    if settings.get("confidence") == "binary":  # so an anonymous session with this history ranks as the user does
        ids, _ = model.recommend_for_history(train.items.ids[seen[3].indices], k=5)
        assert set(ids) == set(model.recommend(train.users.ids[3], k=5)[0])


def test_fold_in_sums_repeated_items_before_mapping_confidences(synthetic):
    model = fast_ials(confidence="weight", alpha=1.0).fit(synthetic)
    engine = model.engine_
    once = engine.fold_in(np.array([1, 5]), np.array([4.0, 1.0]))
    split = engine.fold_in(np.array([5, 1, 1]), np.array([1.0, 3.0, 1.0]))
    np.testing.assert_allclose(split, once, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------ training loop
def test_same_seed_same_vectors_and_metrics(synthetic_split):
    train, test = synthetic_split
    a, b = fast_ials(epochs=3).fit(train), fast_ials(epochs=3).fit(train)
    np.testing.assert_array_equal(a.item_vectors_, b.item_vectors_)
    np.testing.assert_array_equal(a.user_vectors_, b.user_vectors_)
    assert evaluate(a, test) == evaluate(b, test)
    assert not np.array_equal(a.item_vectors_, fast_ials(epochs=3, seed=1).fit(train).item_vectors_)


def test_early_stopping_keeps_the_best_epoch(synthetic_split):
    train, _ = synthetic_split
    fit_part, valid = temporal_split(train, 0.2)
    model = fast_ials(epochs=40, patience=2, reg=0.001, unobserved_weight=0.05).fit(fit_part, valid)
    extra = model.exported_.extra
    best = max(extra["history"], key=lambda h: h["val_ndcg@10"])
    assert extra["best_epoch"] == best["epoch"]
    assert extra["epochs_run"] - extra["best_epoch"] == stale_limit(2, extra["best_epoch"])


def test_ials_learns_planted_structure(synthetic_split):
    train, test = synthetic_split
    ials = fast_ials(epochs=10).fit(train)
    assert evaluate(ials, test)["ndcg@10"] > 1.3 * evaluate(Popularity().fit(train), test)["ndcg@10"]


@pytest.mark.slow
def test_ials_beats_popularity_on_movielens(movielens):
    """Per-user temporal 80/20 holdout on the bundled data, with settings tuned on a validation split of train
    (measured: IALS 0.1345 NDCG@10, Popularity 0.0874, EASE 0.1315)."""
    train, test = temporal_split(movielens, 0.2)
    ials = IALS(factors=128, epochs=8, reg=0.0183, reg_exponent=0.91, unobserved_weight=2.47, confidence="power",
                alpha=1.68, progress=False, device="cpu").fit(train)
    ials_ndcg = evaluate(ials, test)["ndcg@10"]
    pop_ndcg = evaluate(Popularity().fit(train), test)["ndcg@10"]
    assert ials_ndcg > 1.4 * pop_ndcg, (ials_ndcg, pop_ndcg)


def test_pipeline_trains_and_bundles_ials_with_early_stopping(synthetic, tmp_path):
    """`recsys train --model ials`: epochs chosen on validation, the bundle folds in new users as training did."""
    from recsys.models import load
    from recsys.pipeline import train_and_bundle

    params = {"factors": 16, "epochs": 8, "reg": 0.01, "unobserved_weight": 0.5, "progress": False, "device": "cpu"}
    report = train_and_bundle(synthetic, model="ials", params=params, out=tmp_path, index=False)
    assert 1 <= report.params["epochs"] <= 8
    assert report.metrics["ials"]["ndcg@10"] > report.metrics["popularity"]["ndcg@10"]
    model = load(report.bundle)
    row = synthetic.matrix()[0]
    np.testing.assert_allclose(model.engine_.fold_in(row.indices, row.data), model.user_vectors_[0],
                               rtol=2e-3, atol=1e-4)


def test_objective_by_sparse_product_equals_the_gathered_one(tiny):
    m = tiny.matrix()
    coo = m.tocoo()
    rng = np.random.default_rng(3)
    W = torch.as_tensor(rng.normal(size=(m.shape[0], 5)).astype(np.float32))
    H = torch.as_tensor(rng.normal(size=(m.shape[1], 5)).astype(np.float32))
    hyper = {"reg": 0.1, "reg_exponent": 0.5, "unobserved_weight": 0.2}
    gathered = objective(W, H, coo.row, coo.col, coo.data, **hyper)
    assert objective(W, H, coo.row, coo.col, coo.data, indptr=m.indptr, **hyper) == pytest.approx(gathered, rel=1e-5)
