"""EASE and item-KNN: the contract, their closed forms (EASE in each of its forms), and that they learn."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from contract import RecommenderContract

from recsys.data import from_arrays, read_interactions, temporal_split
from recsys.datasets import make_synthetic
from recsys.evaluation import evaluate
from recsys.exceptions import DataValidationError
from recsys.models import EASE, ItemKNN, Popularity, baselines
from recsys.models.baselines import choose_form, memory_bytes


class TestEASE(RecommenderContract):
    def make_model(self):
        return EASE(l2=50.0)


WIDE = (150, 400)  # users x items of the wide synthetic log
WIDE_BOUND = memory_bytes(*WIDE, "woodbury")  # below the dense form's need there: forces Woodbury


@pytest.fixture(scope="module")
def wide_split():
    """A synthetic log with more items than users, as the Woodbury form needs."""
    ds = make_synthetic(n_users=WIDE[0], n_items=WIDE[1], n_factors=4, interactions_per_user=15, seed=3)
    inter = read_interactions(ds.interactions, user_col="user", item_col="item", weight_col="rating",
                              time_col="timestamp", catalog="metadata", item_metadata=ds.items)
    assert (inter.n_users, inter.n_items) == WIDE
    return temporal_split(inter, test_fraction=0.2)


class TestEASEWoodbury(RecommenderContract):
    """The contract again, fitted in the Woodbury form (other logs of the contract fit whichever form fits)."""

    def make_model(self):
        return EASE(l2=50.0, max_bytes=WIDE_BOUND)

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, wide_split):
        train, _ = wide_split
        model = cls().make_model().fit(train)
        assert model.form_ == "woodbury"
        return model, train


class TestEASEHead(RecommenderContract):
    """The contract in the head form: the synthetic log's 100 most popular of 200 items."""

    def make_model(self):
        return EASE(l2=50.0, max_bytes=memory_bytes(300, 200, "head", 100))

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, synthetic_split):
        train, _ = synthetic_split
        model = cls().make_model().fit(train)
        assert (model.form_, model.exported_.extra["head_items"]) == ("head", 100)
        return model, train


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


def test_itemknn_size_limit_is_named(synthetic, monkeypatch):
    monkeypatch.setattr(baselines, "MAX_DENSE_BYTES", 2**16)
    with pytest.raises(DataValidationError, match=(
            r"ItemKNN keeps dense n_items x n_items matrices: 200 items and 300 users need about 0.0 GiB, over "
            r"its limit of 0 GiB \(recsys.models.baselines.MAX_DENSE_BYTES\). Use an embedding model for this "
            r"catalogue: ials \(the default\), mf or two_tower.")):
        ItemKNN().fit(synthetic)


# ------------------------------------------------------------------------------ EASE's forms by memory
def random_log(n_users: int, n_items: int, density: float, seed: int):
    """Every user and item present (ids sorted as their indices), about `density` of the pairs."""
    rng = np.random.default_rng(seed)
    hit = rng.random((n_users, n_items)) < density
    hit[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    hit[rng.integers(0, n_users, n_items), np.arange(n_items)] = True
    u, i = np.nonzero(hit)
    inter = from_arrays(np.array([f"u{k:04d}" for k in u]), np.array([f"i{k:04d}" for k in i]))
    assert (inter.n_users, inter.n_items) == (n_users, n_items)
    return inter


def paper_scores(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck (2019), eq. 8, in float64: P = (X^T X + l2 I)^-1, B = I - P diag(1/diag P), scores X B."""
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    return x @ (np.eye(x.shape[1]) - p / np.diag(p))


def scores_of(model) -> np.ndarray:
    return model.user_vectors_.astype(np.float64) @ model.item_vectors_.T.astype(np.float64)


def test_woodbury_matches_the_paper_on_unseen_items_and_ranks_the_same():
    inter = random_log(40, 120, 0.2, seed=0)
    l2 = 5.0
    x = inter.matrix(binary=True).toarray().astype(np.float64)
    expected = paper_scores(x, l2)
    model = EASE(l2=l2, max_bytes=memory_bytes(40, 120, "woodbury")).fit(inter)
    assert model.form_ == "woodbury" and model.item_vectors_.shape == (120, 40)
    got = scores_of(model)
    unseen = x == 0
    scale = np.abs(expected[unseen]).max()
    np.testing.assert_allclose(got[unseen], expected[unseen], rtol=1e-4, atol=1e-4 * scale)
    # history items: Woodbury leaves out the diag(B) = 0 correction, 1/(l2 P_ii) - 1 (excluded when ranking)
    p_diag = np.diag(np.linalg.inv(x.T @ x + l2 * np.eye(120)))
    np.testing.assert_allclose((got - expected)[~unseen], np.broadcast_to(1 / (l2 * p_diag) - 1, x.shape)[~unseen],
                               rtol=1e-4, atol=1e-4)
    ids, top = model.recommend(list(inter.users.ids), k=10)
    best = np.argsort(-np.where(unseen, expected, -np.inf), axis=1, kind="stable")[:, :10]
    assert (ids == inter.items.ids[best]).all()
    np.testing.assert_allclose(top, np.take_along_axis(expected, best, axis=1), rtol=1e-4, atol=1e-4 * scale)


def test_woodbury_reproduces_dense_ease_fitted_by_the_library():
    """The same log fitted densely (default bound) and in the Woodbury form: same top-k for every user."""
    inter = random_log(30, 90, 0.15, seed=1)
    dense = EASE(l2=10.0, form="dense").fit(inter)
    wood = EASE(l2=10.0).fit(inter)
    assert (dense.form_, wood.form_) == ("dense", "woodbury")
    users = list(inter.users.ids)
    (a_ids, a_scores), (b_ids, b_scores) = dense.recommend(users, k=5), wood.recommend(users, k=5)
    assert (a_ids == b_ids).all()
    np.testing.assert_allclose(a_scores, b_scores, rtol=1e-4, atol=1e-5)


def head_of(x: np.ndarray, n_head: int) -> np.ndarray:
    """The n_head items with the most users, ties to the lower index, in index order."""
    return np.sort(np.argsort(-(x > 0).sum(axis=0), kind="stable")[:n_head])


@pytest.mark.parametrize("shape, n_head", [((60, 50), 20), ((30, 200), 20)], ids=["tall", "wide"])
def test_head_equals_dense_ease_on_the_head_items_only(shape, n_head):
    inter = random_log(*shape, 0.15, seed=2)
    l2 = 3.0
    model = EASE(l2=l2, max_bytes=memory_bytes(*shape, "head", n_head)).fit(inter)
    assert model.form_ == "head" and model.exported_.extra["head_items"] == n_head
    x = inter.matrix(binary=True).toarray().astype(np.float64)
    head = head_of(x, n_head)
    tail = np.setdiff1d(np.arange(shape[1]), head)
    counts = x.sum(axis=0)
    assert counts[head].min() >= counts[tail].max(), "the head is the most popular items"
    got = scores_of(model)
    expected = paper_scores(x[:, head], l2)
    np.testing.assert_allclose(got[:, head], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # the library's dense EASE on the log restricted to the head: the same scores on head items
    dense = EASE(l2=l2, form="dense").fit(inter.subset(np.isin(inter.item_index, head)))
    assert dense.form_ == "dense"
    np.testing.assert_allclose(got[:, head], scores_of(dense)[:, head], rtol=1e-4, atol=1e-5)
    assert not model.item_vectors_[tail].any() and not got[:, tail].any(), "tail items score 0"
    for user in inter.users.ids[:10]:  # a tail item never ranks above a positively scored item
        ids, scores = model.recommend(user, k=shape[1] - 1)
        tail_ids = set(inter.items.ids[tail])
        first_tail = next((r for r, item in enumerate(ids) if item in tail_ids), len(ids))
        assert np.all(scores[first_tail:] <= 0)


@pytest.mark.parametrize("form", ["woodbury", "head"])
def test_fold_in_of_a_training_history_reproduces_the_exported_user_vector(wide_split, form):
    train, _ = wide_split
    bound = WIDE_BOUND if form == "woodbury" else memory_bytes(*WIDE, "head", 60)
    model = EASE(l2=20.0, max_bytes=bound).fit(train)
    assert model.form_ == form and model.exported_.foldin.method == "linear"
    seen = train.matrix()
    users = model.user_vectors_
    for u in range(0, train.n_users, 7):
        folded = model.engine_.fold_in(seen[u].indices)
        np.testing.assert_allclose(folded, users[u], rtol=1e-4, atol=1e-5 * np.abs(users[u]).max())
        ids, _ = model.recommend(train.users.ids[u], k=10)
        from_history, _ = model.recommend_for_history(train.items.ids[seen[u].indices], k=10)
        assert list(ids) == list(from_history)


def test_a_saved_woodbury_model_folds_in_and_ranks_the_same(wide_split, tmp_path):
    train, _ = wide_split
    model = EASE(l2=20.0, max_bytes=WIDE_BOUND).fit(train)
    loaded = EASE.load(model.save(tmp_path / "bundle"))
    assert loaded.form_ == "woodbury" and loaded.get_params() == model.get_params()
    history = list(train.items.ids[[3, 50, 200]])
    assert list(loaded.recommend_for_history(history, k=10)[0]) == list(model.recommend_for_history(history, k=10)[0])


def test_the_form_follows_the_memory_bound():
    wide = random_log(40, 120, 0.2, seed=0)
    dense_need, wood_need = memory_bytes(40, 120, "dense"), memory_bytes(40, 120, "woodbury")
    assert wood_need < dense_need
    cases = [(None, "woodbury"), (dense_need, "woodbury"), (wood_need, "woodbury"), (wood_need - 1, "head")]
    for bound, form in cases:
        model = EASE(l2=5.0, max_bytes=bound).fit(wide)
        need = model.exported_.extra["memory_bytes"]
        assert model.form_ == form and choose_form(40, 120, bound)[0] == form
        assert need <= (bound or baselines.MAX_DENSE_BYTES)
    head = model.exported_.extra["head_items"]  # the largest head within the bound
    assert memory_bytes(40, 120, "head", head + 1) > wood_need - 1 >= memory_bytes(40, 120, "head", head)
    tall = random_log(60, 50, 0.2, seed=0)  # more users than items: never Woodbury
    model = EASE(l2=5.0, max_bytes=memory_bytes(60, 50, "dense") - 1).fit(tall)
    assert model.form_ == "head"


def test_over_the_bound_is_refused_with_the_figures_and_the_fix(synthetic, monkeypatch):
    assert memory_bytes(300, 200, "head", 2) == 12_000
    with pytest.raises(DataValidationError) as err:
        EASE(max_bytes=1000).fit(synthetic)
    assert str(err.value) == (
        "EASE keeps dense matrices that do not fit 200 items and 300 users within max_bytes=1,000 (1,000 bytes): "
        "dense needs 1,015.6 KiB, woodbury only for fewer users than items, and even its smallest form, the 2 most "
        "popular items (form 'head'), needs 11.7 KiB (recsys.models.baselines.memory_bytes). Raise 'max_bytes' to "
        "at least 12,000, or use an embedding model for this catalogue: ials (the default), mf or two_tower.")
    monkeypatch.setattr(baselines, "MAX_DENSE_BYTES", 2**10)
    with pytest.raises(DataValidationError, match=r"within max_bytes=1,024 \(1.0 KiB, the default "
                                                  r"recsys.models.baselines.MAX_DENSE_BYTES\): dense needs"):
        EASE().fit(synthetic)
    assert baselines.ease_bytes(300, 200) == 12_000 > baselines.MAX_DENSE_BYTES


def test_memory_bytes_names_a_bad_form_or_head_size():
    with pytest.raises(DataValidationError, match=r"The 'form' argument of memory_bytes must be one of 'dense', "
                                                  r"'woodbury', 'head'. Got 'sparse'."):
        memory_bytes(10, 20, "sparse")
    with pytest.raises(DataValidationError, match=r"memory_bytes\(form='head'\) needs 'head_items', an int from 1 "
                                                  r"to n_items \(20\). Got None."):
        memory_bytes(10, 20, "head")


def test_wide_catalogues_get_a_form_within_the_default_bound():
    limit = baselines.MAX_DENSE_BYTES
    assert choose_form(610, 9_724)[0] == "woodbury"  # the bundled MovieLens catalogue: the smaller form
    assert baselines.ease_bytes(610, 9_724) < baselines.dense_bytes(610, 9_724) <= limit
    assert choose_form(610, 9_724, form="dense")[0] == "dense"
    assert choose_form(2_000, 1_000)[0] == "dense"  # more users than items
    assert choose_form(7_375, 105_114, 16 * 2**30)[0] == "woodbury"  # Ciao, given 16 GiB
    for n_users, n_items in [(7_375, 105_114), (22_000, 296_000), (12_000, 41_632), (30_000, 40_000)]:
        assert baselines.dense_bytes(n_users, n_items) > limit  # what benchmarks/quality.py declines
        form, head, need = choose_form(n_users, n_items)
        assert form == "head" and MIN_HEAD <= head < n_items
        assert need == baselines.ease_bytes(n_users, n_items) <= limit < memory_bytes(n_users, n_items, "head",
                                                                                       head + 1)


MIN_HEAD = baselines.MIN_HEAD_ITEMS


@pytest.mark.parametrize("shape, form, n_head", [((300, 1000), "dense", None), ((300, 3000), "woodbury", None),
                                                 ((2000, 800), "head", 300)], ids=["dense", "woodbury", "head"])
def test_peak_memory_of_a_fit_stays_within_memory_bytes(shape, form, n_head):
    """numpy reports its allocations to tracemalloc: the fit's peak (matrices, exported vectors, the Engine's
    copies) is within memory_bytes plus the sparse log's copies, and the figure is not loose."""
    rng = np.random.default_rng(4)
    users = np.repeat(np.arange(shape[0]), 20)
    inter = from_arrays(users.astype(str), rng.integers(0, shape[1], len(users)).astype(str))
    need = memory_bytes(inter.n_users, inter.n_items, form, n_head)
    model = EASE(l2=10.0, max_bytes=need, form="auto" if form == "head" else form)
    tracemalloc.start()
    try:
        model.fit(inter)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert model.form_ == form
    assert 0.5 * need < peak <= need + 64 * inter.nnz, (peak, need)


@pytest.mark.parametrize("model, expected", [
    (EASE(l2=0.0), "The 'l2' parameter of EASE must be a float > 0. Got 0.0."),
    (EASE(max_bytes=0), "The 'max_bytes' parameter of EASE must be an int >= 1 or None. Got 0."),
    (EASE(max_bytes=2.5e9), "The 'max_bytes' parameter of EASE must be an int >= 1 or None. Got 2500000000.0."),
    (ItemKNN(neighbours=0), "The 'neighbours' parameter of ItemKNN must be an int >= 1. Got 0."),
    (ItemKNN(shrink=-1.0), "The 'shrink' parameter of ItemKNN must be a float >= 0. Got -1.0."),
])
def test_invalid_params(synthetic, model, expected):
    with pytest.raises(DataValidationError) as err:
        model.fit(synthetic)
    assert expected in str(err.value)


def test_a_named_form_is_kept_and_a_bad_one_is_named(synthetic):
    inter = random_log(30, 90, 0.15, seed=1)
    assert EASE(l2=10.0).fit(inter).form_ == "woodbury", "fewer users than items: the smaller form"
    assert EASE(l2=10.0, form="dense").fit(inter).form_ == "dense"
    with pytest.raises(DataValidationError, match="The 'form' parameter of EASE must be one of 'auto', 'dense'"):
        EASE(form="sparse").fit(inter)
