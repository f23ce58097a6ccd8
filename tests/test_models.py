"""Every model runs the contract; model-specific behaviour and quality checks follow."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from contract import RecommenderContract

from recsys.data import temporal_split
from recsys.evaluation import evaluate
from recsys.exceptions import DataValidationError
from recsys.metrics import ranking_metrics
from recsys.models import MF, Popularity
from recsys.models.loop import stale_limit


def fast_mf(**overrides) -> MF:
    params = {"factors": 16, "epochs": 15, "reg": 0.01, "lr": 0.02, "progress": False, "device": "cpu", "seed": 0}
    return MF(**{**params, **overrides})


class TestMFSoftmax(RecommenderContract):
    def make_model(self):
        return fast_mf()


class TestMFSampled(RecommenderContract):
    def make_model(self):
        return fast_mf(loss="sampled", negatives=50, batch_size=256)


class TestMFBPR(RecommenderContract):
    def make_model(self):
        return fast_mf(loss="bpr", batch_size=256)


class TestPopularity(RecommenderContract):
    def make_model(self):
        return Popularity()


# --------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("param, value, expected", [
    ("factors", 0, "The 'factors' parameter of MF must be an int >= 1. Got 0."),
    ("factors", 2.5, "must be an int >= 1. Got 2.5"),
    ("lr", 0.0, "The 'lr' parameter of MF must be a float > 0. Got 0.0."),
    ("loss", "hinge", "must be one of 'softmax', 'sampled', 'bpr'. Got 'hinge'."),
    ("progress", "yes", "must be one of True, False"),
])
def test_invalid_params_are_named(synthetic, param, value, expected):
    with pytest.raises(DataValidationError) as err:
        fast_mf(**{param: value}).fit(synthetic)
    assert expected in str(err.value)


def test_set_params_rejects_unknown_names():
    with pytest.raises(DataValidationError, match="Invalid parameter 'factor'"):
        MF().set_params(factor=3)


def test_validation_must_share_id_maps(synthetic, movielens):
    _, other_test = temporal_split(movielens, 0.2)
    with pytest.raises(DataValidationError, match="id maps"):
        fast_mf().fit(synthetic, validation=other_test)


# ------------------------------------------------------------------------------------------- training
def test_same_seed_same_vectors(synthetic):
    a, b = fast_mf(epochs=3).fit(synthetic), fast_mf(epochs=3).fit(synthetic)
    np.testing.assert_array_equal(a.item_vectors_, b.item_vectors_)
    c = fast_mf(epochs=3, seed=1).fit(synthetic)
    assert not np.array_equal(a.item_vectors_, c.item_vectors_)


def test_early_stopping_keeps_the_best_epoch(synthetic_split):
    train, _ = synthetic_split
    fit_part, valid = temporal_split(train, 0.2)
    model = fast_mf(epochs=60, patience=2, lr=0.05).fit(fit_part, valid)
    extra = model.exported_.extra
    history = extra["history"]
    assert extra["epochs_run"] < 60, "stopped early"
    best = max(history, key=lambda h: h["val_ndcg@10"])
    assert extra["best_epoch"] == best["epoch"]
    assert extra["epochs_run"] - extra["best_epoch"] == stale_limit(2, extra["best_epoch"])


def test_a_slow_climb_through_short_plateaus_is_not_stopped_on_a_plateau():
    """Patience grows to a quarter of the epochs to the best: a curve that rises 0.001 an epoch with three
    flat epochs every 20 (how ALS with a small unobserved weight climbs) runs to its peak at epoch 60
    with patience 3, then stops 15 epochs later."""
    from recsys.models.loop import fit_loop

    curve = [0.001 * min(e - e % 20 + min(e % 20, 16), 60) for e in range(1, 101)]
    epoch_of = iter(range(1, 101))
    result = fit_loop(epochs=100, run_epoch=lambda e: 0.0, snapshot=lambda: next(epoch_of), validate=lambda s:
                      curve[s - 1], patience=3, progress=False)
    assert result.best_epoch == curve.index(max(curve)) + 1
    assert len(result.history) == result.best_epoch + stale_limit(3, result.best_epoch)
    assert stale_limit(3, 8) == 3 and stale_limit(3, 60) == 15


def test_max_seconds_bounds_training_even_within_an_epoch(synthetic):
    model = fast_mf(epochs=50, max_seconds=1e-6, batch_size=8, loss="bpr").fit(synthetic)
    assert model.exported_.extra["epochs_run"] == 1, "no epoch starts after max_seconds"
    from recsys.models.loop import fit_loop, optimise

    steps = []
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    def epoch(_: int) -> float:
        def losses():
            for _ in range(1000):
                steps.append(1)
                yield opt.param_groups[0]["params"][0].sum() * 0 + torch.ones((), requires_grad=True)
        return optimise(opt, losses())

    fit_loop(epochs=3, run_epoch=epoch, snapshot=lambda: None, progress=False, max_seconds=1e-6)
    assert len(steps) == 2, "one step, then the deadline ends the pass (the generator is asked once more)"
    steps.clear()
    optimise(opt, (torch.ones((), requires_grad=True) for _ in range(5) if not steps.append(1)))
    assert len(steps) == 5, "outside fit_loop there is no deadline"


@pytest.mark.parametrize("max_users", [None, 7])
def test_the_epoch_validator_scores_what_evaluate_scores(synthetic_split, max_users, monkeypatch):
    """fit_loop's per-epoch NDCG@10 (set up once, block-wise scoring) equals evaluate's on the same users."""
    from recsys.engine import Engine
    from recsys.models.base import Exported
    from recsys.models.loop import ndcg_validator

    train, test = synthetic_split
    rng = np.random.default_rng(0)
    state = Exported(rng.standard_normal((train.n_items, 8)).astype(np.float32),
                     rng.standard_normal((train.n_users, 8)))  # float64 users: cast like the Engine does
    engine = Engine(state.item_vectors, state.user_vectors.astype(np.float32), train.users, train.items,
                    seen=train.matrix(binary=True))
    expected = evaluate(engine, test, 10, max_users=max_users, seed=3)["ndcg@10"]
    assert ndcg_validator(train, test, max_users, 3)(state) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr("recsys.models.loop.VALIDATION_BLOCK", 3 * train.n_items)  # blocks of 3 users: seen pairs split
    assert ndcg_validator(train, test, max_users, 3)(state) == pytest.approx(expected, abs=1e-12)
    assert ndcg_validator(train, None, max_users, 3) is None


@pytest.mark.parametrize("loss", ["softmax", "sampled", "bpr"])
def test_mf_learns_planted_structure(synthetic_split, loss):
    """On a log with planted clusters every loss beats popularity clearly (softmax: 0.20 vs 0.145)."""
    train, test = synthetic_split
    mf = fast_mf(loss=loss, epochs=30, negatives=50, batch_size=256).fit(train)
    pop = Popularity().fit(train)
    assert evaluate(mf, test)["ndcg@10"] > 1.3 * evaluate(pop, test)["ndcg@10"]


def test_popularity_ranks_by_count(synthetic):
    model = Popularity().fit(synthetic)
    counts = np.bincount(synthetic.item_index, minlength=synthetic.n_items)
    ids, _ = model.recommend(synthetic.users.ids[0], k=5, exclude_seen=False)
    expected = synthetic.items.ids[np.argsort(-counts, kind="stable")[:5]]
    assert counts[synthetic.items.to_index(ids)].tolist() == counts[synthetic.items.to_index(expected)].tolist()


def test_fold_in_of_a_users_history_approaches_their_learned_vector(synthetic_split):
    """recommend_for_history (no retraining) ranks nearly as well as the user's trained vector."""
    train, test = synthetic_split
    model = fast_mf(epochs=30).fit(train)
    seen = train.matrix()
    engine = model.engine_
    folded = np.stack([engine.fold_in(seen[u].indices) for u in range(train.n_users)])
    top, _ = engine.retriever.search(folded, 10, exclude=seen)

    folded_ndcg = ranking_metrics(top, test.matrix(), 10)["ndcg@10"]
    assert folded_ndcg > 0.8 * evaluate(model, test)["ndcg@10"]
    assert folded_ndcg > 1.3 * evaluate(Popularity().fit(train), test)["ndcg@10"]
