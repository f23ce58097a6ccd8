"""Popularity baseline: everyone gets the most-interacted items they have not seen."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..data import Interactions
from ..foldin import FoldIn
from ..params import BOOL
from .base import Exported, Recommender


class Popularity(Recommender):
    """Scores an item by how many users interacted with it (or by the sum of weights, `use_weights`).

    Exported as 1-dimensional vectors (item = popularity, user = 1), so it ranks through the same engine as
    every other model; similar items are the most popular other items.
    """

    name: ClassVar[str] = "popularity"
    _parameter_constraints: ClassVar[dict] = {"use_weights": BOOL}
    search_space: ClassVar[dict] = {}  # nothing to search

    def __init__(self, *, use_weights: bool = False):
        self.use_weights = use_weights

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        counts = np.bincount(train.item_index, weights=train.weight if self.use_weights else None,
                             minlength=train.n_items)
        item_vectors = (counts / max(counts.max(), 1e-12)).astype(np.float32)[:, None]
        user_vectors = np.ones((train.n_users, 1), np.float32)
        return Exported(item_vectors, user_vectors, foldin=FoldIn("constant"), similarity="dot")
