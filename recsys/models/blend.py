"""A weighted blend of fitted models, served as one model.

Two recommenders of different families (an item-item model such as EASE and a factor model such as iALS) make
different errors, and a weighted sum of their scores usually ranks better than either: the blend is how the
engine stays at least as good as the better of two close candidates when a validation split cannot tell which one
the test will favour. Every model here scores by a dot product, so the sum needs no new machinery: the blend's
vectors are the components' vectors side by side,

    user = [u_1 * s_1, ..., u_m * s_m],   item = [v_1, ..., v_m],   user . item = sum_j s_j u_j . v_j,

with s_j = weight_j / spread_j, where spread_j is the mean per-user standard deviation of component j's scores on a
seeded sample of training users (scores of different models live on different scales; the weights apply to
standardised scores). The item columns stay as each model made them: the int8 codes already scale each column by
its own peak, and a fold-in reads them without a copy. Fold-in concatenates each component's own fold-in (`recsys.foldin.BlendPart`), so an unseen
user is answered as training would have answered them. Similar items and users compare the first component's
vectors.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..data import Interactions
from ..exceptions import DataValidationError
from ..foldin import BlendPart, FoldIn
from .base import Exported, Recommender, seen_matrix
from .registry import MODEL_NAMES, make_model

SPREAD_USERS = 1000  # training users whose score spread sets each component's scale


class Components:
    """A blend's `components`: a non-empty sequence of (model name, parameters) pairs, no blend among them."""

    def check(self, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            return False
        return all(isinstance(c, Sequence) and not isinstance(c, str) and len(c) == 2 and c[0] in MODEL_NAMES and c[0] != "blend"
                   and isinstance(c[1], Mapping) for c in value)

    def describe(self) -> str:
        return f"a non-empty list of (model, parameters) pairs with models among {[m for m in MODEL_NAMES if m != 'blend']}"


class Weights:
    """A blend's `weights`: finite numbers >= 0, at least one > 0."""

    def check(self, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            return False
        ok = all(not isinstance(w, bool) and isinstance(w, (int, float)) and np.isfinite(w) and w >= 0 for w in value)
        return ok and sum(value) > 0

    def describe(self) -> str:
        return "a non-empty list of finite numbers >= 0, not all 0"


class Blend(Recommender):
    """Components fitted on the same interactions, their standardised scores summed with `weights` (see the
    module docstring). `Blend(components=[("ease", {"l2": 100.0}), ("ials", {"factors": 256})], weights=[0.6, 0.4])`.
    """

    name: ClassVar[str] = "blend"
    _parameter_constraints: ClassVar[dict] = {"components": Components(), "weights": Weights()}

    def __init__(self, *, components: Sequence[tuple[str, Mapping[str, Any]]] = (("ease", {}), ("ials", {})),
                 weights: Sequence[float] = (0.5, 0.5), seed: int = 0):
        self.components = components
        self.weights = weights
        self.seed = seed

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        if len(self.weights) != len(self.components):
            raise DataValidationError(f"The 'weights' parameter of Blend must have one weight per component "
                                      f"({len(self.components)}). Got {len(self.weights)}: {list(self.weights)}.")
        exports = [make_model(name).set_params(**params).fit(train, validation).exported_
                   for name, params in self.components]
        return blend_exported(exports, self.weights, train, self.seed,
                              names=[name for name, _ in self.components])

    @classmethod
    def from_fitted(cls, models: Sequence[Recommender], weights: Sequence[float], train: Interactions,
                    seed: int = 0) -> Blend:
        """The blend of models already fitted on `train` (no refit): what `fit` would give for their
        parameters."""
        blend = cls(components=tuple((m.name, m.get_params()) for m in models), weights=tuple(weights), seed=seed)
        blend._validate_params()
        exported = blend_exported([m.exported_ for m in models], weights, train, seed, names=[m.name for m in models])
        blend._set_state(exported, train.users, train.items, seen_matrix(exported, train), train.item_metadata)
        return blend


def score_spread(exported: Exported, users: np.ndarray, block: int = 100) -> float:
    """The mean over `users` of the standard deviation of their scores over the catalogue (a block of users at
    a time: a wide catalogue's full score matrix need not fit)."""
    items = exported.item_vectors.T
    stds = [np.std(exported.user_vectors[users[i:i + block]] @ items, axis=1, dtype=np.float64)
            for i in range(0, len(users), block)]
    spread = float(np.concatenate(stds).mean()) if len(users) else 0.0
    return spread if spread > 0 and np.isfinite(spread) else 1.0


def spread_users(train: Interactions, seed: int) -> np.ndarray:
    """A seeded sample of up to SPREAD_USERS training users with at least one interaction."""
    users = np.flatnonzero(np.diff(train.matrix().indptr) > 0)
    if len(users) > SPREAD_USERS:
        users = np.sort(np.random.default_rng(seed).choice(users, SPREAD_USERS, replace=False))
    return users


def blend_exported(exports: Sequence[Exported], weights: Sequence[float], train: Interactions, seed: int = 0,
                   names: Sequence[str] | None = None) -> Exported:
    """The blend of fitted components' exports (trained on `train`) with `weights`, as one Exported."""
    users = spread_users(train, seed)
    parts, items, user_cols, projections = [], [], [], []
    info = []
    for j, (exported, weight) in enumerate(zip(exports, weights, strict=True)):
        spread = score_spread(exported, users)
        user_scale = float(weight) / spread
        dims = exported.item_vectors.shape[1]
        parts.append(BlendPart(exported.foldin, dims, user_scale))
        items.append(exported.item_vectors)
        user_cols.append(exported.user_vectors * np.float32(user_scale))
        projections.append(exported.projection)
        info.append({"model": None if names is None else names[j], "weight": float(weight), "dims": dims,
                     "score_spread": spread, "training": exported.extra})
    projection = None
    if any(p is not None for p in projections):
        projection = np.hstack([np.zeros((len(items[j]), parts[j].dims), np.float32) if p is None else p
                                for j, p in enumerate(projections)]).astype(np.float32)
    first = exports[0]
    # a 'sequence' part runs its model's encoder on its own columns (`FoldIn.check` allows one such part)
    sequence = next((e.sequence for e in exports if e.sequence is not None), None)
    return Exported(np.hstack(items).astype(np.float32), np.hstack(user_cols).astype(np.float32),
                    foldin=FoldIn("blend", parts=tuple(parts)), similarity=first.similarity,
                    similarity_dims=first.similarity_dims or parts[0].dims, extra={"components": info},
                    projection=projection, sequence=sequence)
