"""EASE and item-KNN: the contract, their closed forms, and that they learn."""
from __future__ import annotations

import numpy as np
import pytest
from contract import RecommenderContract

from recsys.data import from_arrays
from recsys.evaluation import evaluate
from recsys.exceptions import DataValidationError
from recsys.models import EASE, ItemKNN, Popularity, baselines


class TestEASE(RecommenderContract):
    def make_model(self):
        return EASE(l2=50.0)


class TestItemKNN(RecommenderContract):
    def make_model(self):
        return ItemKNN(neighbours=20)


def tiny():
    users = ["a", "a", "a", "b", "b", "c", "c", "c", "d", "d", "e"]
    items = ["x", "y", "z", "x", "y", "y", "z", "w", "x", "w", "z"]
    return from_arrays(np.array(users), np.array(items))


def test_ease_matches_the_closed_form_in_float64():
    inter = tiny()
    x = inter.matrix(binary=True).toarray().astype(np.float64)
    l2 = 0.5
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)
    model = EASE(l2=l2).fit(inter)
    np.testing.assert_allclose(model.item_vectors_.T, b, atol=1e-5)
    assert np.all(np.diag(model.item_vectors_) == 0), "an item never recommends itself"
    np.testing.assert_allclose(model.user_vectors_ @ model.item_vectors_.T, x @ b, atol=1e-5)


def test_itemknn_cosine_with_shrink_and_neighbour_cut():
    inter = tiny()
    x = inter.matrix(binary=True).toarray()
    co = x.T @ x
    n = np.sqrt(np.diag(co))
    full = co / (np.outer(n, n) + 1.0)
    np.fill_diagonal(full, 0)
    model = ItemKNN(neighbours=10, shrink=1.0).fit(inter)
    np.testing.assert_allclose(model.item_vectors_.T, full, rtol=1e-5)
    cut = ItemKNN(neighbours=1).fit(inter).item_vectors_.T  # row j: the items j votes for
    assert np.all((cut > 0).sum(axis=1) <= 1)
    dense = ItemKNN(neighbours=10).fit(inter).item_vectors_.T
    assert np.array_equal(np.argmax(cut, axis=1)[cut.max(1) > 0], np.argmax(dense, axis=1)[cut.max(1) > 0])


def test_fold_in_of_a_training_history_reproduces_the_users_scores(synthetic):
    model = EASE(l2=20.0).fit(synthetic)
    engine = model.engine_
    seen = synthetic.matrix()
    for u in range(5):
        np.testing.assert_allclose(engine.fold_in(seen[u].indices), model.user_vectors_[u])
        ids, _ = model.recommend(synthetic.users.ids[u], k=10)
        folded, _ = model.recommend_for_history(synthetic.items.ids[seen[u].indices], k=10)
        assert list(ids) == list(folded)


@pytest.mark.parametrize("model", [EASE(l2=50.0), ItemKNN(neighbours=30)], ids=["ease", "itemknn"])
def test_baselines_learn_planted_structure(synthetic_split, model):
    train, test = synthetic_split
    pop = evaluate(Popularity().fit(train), test)["ndcg@10"]
    assert evaluate(model.fit(train), test)["ndcg@10"] > 1.3 * pop


@pytest.mark.parametrize("model", [EASE(), ItemKNN()], ids=["ease", "itemknn"])
def test_catalogue_size_limit_is_named(synthetic, monkeypatch, model):
    monkeypatch.setattr(baselines, "MAX_DENSE_BYTES", 2**16)
    name = type(model).__name__
    with pytest.raises(DataValidationError, match=(
            rf"{name} keeps dense n_items x n_items matrices: 200 items and 300 users need about 0.0 GiB, over "
            r"its limit of 0 GiB \(recsys.models.baselines.MAX_DENSE_BYTES\). Use an embedding model for this "
            r"catalogue: ials \(the default\), mf or two_tower.")):
        model.fit(synthetic)


def test_dense_limit_admits_the_bundled_catalogue_and_refuses_a_large_one():
    assert baselines.dense_bytes(610, 9_724) <= baselines.MAX_DENSE_BYTES
    assert baselines.dense_bytes(30_000, 40_000) > baselines.MAX_DENSE_BYTES


@pytest.mark.parametrize("model, expected", [
    (EASE(l2=0.0), "The 'l2' parameter of EASE must be a float > 0. Got 0.0."),
    (ItemKNN(neighbours=0), "The 'neighbours' parameter of ItemKNN must be an int >= 1. Got 0."),
    (ItemKNN(shrink=-1.0), "The 'shrink' parameter of ItemKNN must be a float >= 0. Got -1.0."),
])
def test_invalid_params(synthetic, model, expected):
    with pytest.raises(DataValidationError) as err:
        model.fit(synthetic)
    assert expected in str(err.value)
