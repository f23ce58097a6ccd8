"""evaluate(): full ranking through the engine, training items excluded, hand-checked."""
from __future__ import annotations

import numpy as np
import pytest

from recsys.data import from_arrays
from recsys.engine import Engine
from recsys.evaluation import compare, evaluate, evaluate_per_user, ratio_interval
from recsys.exceptions import DataValidationError
from recsys.models import Popularity


def test_hand_computed_case_excludes_training_items():
    # Two users, four items. Item vectors are 1-d scores: a > b > c > d for everyone.
    inter = from_arrays(["u1", "u1", "u2", "u2"], ["a", "c", "b", "d"])
    train = inter.subset(np.array([True, False, True, False]))  # u1 saw a, u2 saw b
    test = inter.subset(np.array([False, True, False, True]))   # u1 -> c, u2 -> d
    engine = Engine(np.array([[4.0], [3.0], [2.0], [1.0]]), np.ones((2, 1)), inter.users, inter.items,
                    seen=train.matrix())
    metrics = evaluate(engine, test, k=2)
    # u1 ranks (b, c): hit at position 1 -> ndcg = 1/log2(3); u2 ranks (a, c): no hit.
    assert metrics["users"] == 2
    assert metrics["hit_rate@2"] == pytest.approx(0.5)
    assert metrics["ndcg@2"] == pytest.approx((1 / np.log2(3)) / 2)
    assert metrics["recall@2"] == pytest.approx(0.5)
    assert metrics["coverage@2"] == pytest.approx(3 / 4)  # b, c, a


def test_explicit_train_overrides_the_models_seen_items():
    inter = from_arrays(["u1", "u1"], ["a", "b"])
    test = inter.subset(np.array([False, True]))
    engine = Engine(np.array([[2.0], [1.0]]), np.ones((1, 1)), inter.users, inter.items)  # nothing seen
    assert evaluate(engine, test, k=1)["hit_rate@1"] == 0  # a ranks first
    assert evaluate(engine, test, k=1, train=inter.subset(np.array([True, False])))["hit_rate@1"] == 1


def test_test_must_share_id_maps(synthetic, movielens):
    with pytest.raises(DataValidationError, match="id maps"):
        evaluate(Popularity().fit(synthetic), movielens)


def test_compare_gives_one_row_per_model(synthetic_split):
    train, test = synthetic_split
    table = compare({"pop": Popularity().fit(train), "pop-w": Popularity(use_weights=True).fit(train)}, test)
    assert list(table.index) == ["pop", "pop-w"] and "ndcg@10" in table.columns


def test_max_users_samples(synthetic_split):
    train, test = synthetic_split
    assert evaluate(Popularity().fit(train), test, max_users=50)["users"] == 50


def test_per_user_values_average_to_evaluates_figure(synthetic_split):
    train, test = synthetic_split
    model = Popularity().fit(train)
    per_user = evaluate_per_user(model, test, k=[5, 10])
    assert len(per_user["user"]) == evaluate(model, test)["users"] and not np.isnan(per_user["ndcg@10"]).any()
    assert per_user["ndcg@10"].mean() == pytest.approx(evaluate(model, test, k=10)["ndcg@10"])
    assert per_user["recall@5"].mean() == pytest.approx(evaluate(model, test, k=5)["recall@5"])


def test_ratio_interval_holds_one_for_noise_and_excludes_it_for_a_real_gain():
    rng = np.random.default_rng(0)
    theirs = rng.random(2000)
    same, low, high = ratio_interval(theirs + rng.normal(0, 0.05, 2000), theirs)
    assert low < 1 < high and same == pytest.approx(1, abs=0.01)
    better, low, high = ratio_interval(theirs * 1.1 + rng.normal(0, 0.05, 2000), theirs)
    assert better == pytest.approx(1.1, abs=0.01) and 1.0 < low < better < high
    assert ratio_interval(theirs, theirs) == (1.0, 1.0, 1.0), "the same model: no spread at all"
    with pytest.raises(DataValidationError, match=r"equal-length .* Got shapes \(2000,\) and \(3,\)"):
        ratio_interval(theirs, theirs[:3])
