"""The contract every model honours (implicit-style): one mixin, run against each model.

A test class sets `make_model()` returning an unfitted model configured to train fast.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data import Interactions, from_arrays
from recsys.exceptions import BundleError, DataValidationError, NotFittedError, UnknownIdError
from recsys.models import MF, Popularity, Recommender, load


def planted_log(seed: int = 0) -> tuple[Interactions, str, str]:
    """Four clusters of users, each using most of its own 10 items, plus a few random items; a user of the
    largest cluster has used 9 of its 10 items. Returns (log, that user, the item they have not used): any model
    that learns anything (co-occurrence, factors, or only popularity: the cluster's items are the most used)
    must rank that item in its top 10 of the ~130 the user has not seen."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    n_noise = 100
    for cluster, size in enumerate((40, 30, 30, 30)):
        own = [f"c{cluster}-{j}" for j in range(10)]
        for u in range(size):
            picked = list(rng.choice(own, 8, replace=False)) + [f"n{j}" for j in rng.choice(n_noise, 2)]
            users += [f"u{cluster}-{u}"] * len(picked)
            items += picked
    user, withheld = "target", "c0-9"
    users += [user] * 9
    items += [f"c0-{j}" for j in range(9)]
    ids = sorted(set(items))
    genres = pd.DataFrame({"item": ids, "genres": [[i.split("-")[0]] if "-" in i else ["noise"] for i in ids]})
    return from_arrays(np.array(users), np.array(items), item_metadata=genres), user, withheld


class RecommenderContract:
    def make_model(self) -> Recommender:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, synthetic_split):
        train, _ = synthetic_split
        return cls().make_model().fit(train), train

    def test_a_withheld_item_of_the_users_cluster_ranks_in_the_top_k(self):
        """Meaning, not shapes: the item a user's whole cluster uses and they have not yet is recommended."""
        log, user, withheld = planted_log()
        ids, _ = self.make_model().fit(log).recommend(user, k=10)
        assert withheld in set(ids), f"{withheld} not in the top 10 {list(ids)}"
        assert not {f"c0-{j}" for j in range(9)} & set(ids), "seen items excluded"

    def test_fit_returns_self_and_sets_learned_state(self, synthetic_split):
        model = self.make_model()
        train, _ = synthetic_split
        assert model.fit(train) is model
        assert model.item_vectors_.shape[0] == train.n_items
        assert model.user_vectors_.shape == (train.n_users, model.item_vectors_.shape[1])

    def test_unfitted_use_raises_not_fitted(self):
        model = self.make_model()
        with pytest.raises(NotFittedError, match="not fitted"):
            model.recommend("u0001")
        with pytest.raises(NotFittedError):
            model.similar_items("i0001")

    def test_init_stores_params_only_and_get_params_round_trips(self):
        model = self.make_model()
        clone = type(model)(**model.get_params())
        assert clone.get_params() == model.get_params()
        assert not [k for k in vars(model) if k.endswith("_")]

    def test_fit_rejects_raw_frames(self, synthetic):
        with pytest.raises(DataValidationError, match="Interactions"):
            self.make_model().fit(synthetic.to_frame())

    def test_recommend_single_user_shapes_and_order(self, fitted):
        model, train = fitted
        ids, scores = model.recommend(train.users.ids[0], k=7)
        assert ids.shape == scores.shape == (7,)
        assert np.all(np.diff(scores) <= 1e-6), "best first"
        assert len(set(ids)) == 7

    def test_batch_equals_single(self, fitted):
        model, train = fitted
        users = list(train.users.ids[:25])
        batch_ids, batch_scores = model.recommend(users, k=5)
        for row, user in enumerate(users):
            ids, scores = model.recommend(user, k=5)
            assert list(ids) == list(batch_ids[row])
            np.testing.assert_allclose(scores, batch_scores[row], rtol=1e-5, atol=1e-6)

    def test_exclude_seen(self, fitted):
        model, train = fitted
        seen = train.matrix()
        for u in range(10):
            user = train.users.ids[u]
            seen_ids = set(train.items.ids[seen[u].indices])
            ids, _ = model.recommend(user, k=20)
            assert not seen_ids & set(ids)
            ids_all, _ = model.recommend(user, k=train.n_items, exclude_seen=False)
            assert seen_ids <= set(ids_all)

    def test_allow_list_restricts_results(self, fitted):
        model, train = fitted
        allowed = list(train.items.ids[::3])
        ids, _ = model.recommend(train.users.ids[1], k=10, items=allowed, exclude_seen=False)
        assert set(ids) <= set(allowed) and len(ids) == 10

    def test_unknown_user_raises_clear_error(self, fitted):
        model, _ = fitted
        with pytest.raises(UnknownIdError, match="no-such-user"):
            model.recommend("no-such-user")

    def test_similar_items_excludes_query(self, fitted):
        model, train = fitted
        item = train.items.ids[3]
        ids, scores = model.similar_items(item, k=10)
        assert item not in set(ids) and len(ids) == 10
        assert np.all(np.diff(scores) <= 1e-6)
        batch, _ = model.similar_items([item, train.items.ids[4]], k=10)
        assert list(batch[0]) == list(ids)

    def test_similar_users_excludes_query(self, fitted):
        model, train = fitted
        user = train.users.ids[5]
        ids, _ = model.similar_users(user, k=5)
        assert user not in set(ids) and len(ids) == 5

    def test_recommend_for_history_excludes_history(self, fitted):
        model, train = fitted
        history = list(train.items.ids[:5]) + ["unknown-item"]
        ids, scores = model.recommend_for_history(history, k=10)
        assert len(ids) == 10 and not set(history) & set(ids)
        assert np.all(np.isfinite(scores))

    def test_save_load_round_trip(self, fitted, tmp_path):
        model, train = fitted
        path = model.save(tmp_path / "bundle")
        loaded = load(path)
        assert type(loaded) is type(model)
        assert loaded.get_params() == model.get_params()
        users = list(train.users.ids[:10])
        a_ids, a_scores = model.recommend(users, k=10)
        b_ids, b_scores = loaded.recommend(users, k=10)
        assert (a_ids == b_ids).all()
        np.testing.assert_allclose(a_scores, b_scores, rtol=1e-6)
        assert list(loaded.similar_items(train.items.ids[0])[0]) == list(model.similar_items(train.items.ids[0])[0])
        assert list(loaded.recommend_for_history(train.items.ids[:3])[0]) == \
            list(model.recommend_for_history(train.items.ids[:3])[0])

    def test_loading_as_the_wrong_class_fails(self, fitted, tmp_path):
        model, _ = fitted
        path = model.save(tmp_path / "bundle")
        other = Popularity if type(model) is MF else MF
        with pytest.raises(BundleError, match="not a"):
            other.load(path)
