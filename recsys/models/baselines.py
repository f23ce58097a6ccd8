"""Reference item-item baselines for evaluation: EASE (Steck 2019) and cosine item-KNN.

Both score a user as a weighted sum over the items in their history, score(u, i) = sum_j x_uj W[j, i], so they
are exported like every other model: item vectors are the columns of W (n_items dims) and a user vector is the
user's binary history row (fold-in {"method": "indicator"}). That makes them rank through the same Engine and
evaluator as the embedding models, at a cost of n_items^2 floats: meant for offline comparison on catalogues of
up to a few tens of thousands of items, not for serving.
"""
from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from ..data import Interactions
from ..exceptions import DataValidationError
from ..foldin import FoldIn
from .base import Exported, Interval, Recommender

log = logging.getLogger("recsys")
MAX_DENSE_BYTES = 6 * 2**30  # refuse fits whose dense float32 matrices would need more than this


def dense_bytes(n_users: int, n_items: int) -> int:
    """What EASE and item-KNN hold at their peak: three n_items x n_items float32 matrices (Gram, inverse or
    similarities, weights) and the dense n_users x n_items histories they export as user vectors."""
    return 4 * (3 * n_items * n_items + n_users * n_items)


def _check_size(model: Recommender, train: Interactions) -> None:
    need = dense_bytes(train.n_users, train.n_items)
    if need > MAX_DENSE_BYTES:
        raise DataValidationError(
            f"{type(model).__name__} keeps dense n_items x n_items matrices: {train.n_items:,} items and "
            f"{train.n_users:,} users need about {need / 2**30:.1f} GiB, over its limit of "
            f"{MAX_DENSE_BYTES / 2**30:.0f} GiB (recsys.models.baselines.MAX_DENSE_BYTES). Use an embedding "
            "model for this catalogue: ials (the default), mf or two_tower.")


def _export(weights: np.ndarray, history: sp.csr_matrix, extra: dict) -> Exported:
    """item vector i = column i of the item-item weights; user vector = binary history row."""
    return Exported(item_vectors=np.ascontiguousarray(weights.T, dtype=np.float32),
                    user_vectors=history.toarray().astype(np.float32), foldin=FoldIn("indicator"),
                    similarity="cosine", extra=extra)


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix through its Cholesky factor (LAPACK potrf + potri):
    about 2.5x faster than a general inverse. float32 is accurate enough here: l2 > 0 bounds the condition."""
    factor, info = lapack.spotrf(a, lower=False, overwrite_a=True, clean=True)
    if info == 0:
        inv, info = lapack.spotri(factor, lower=False, overwrite_c=True)
    if info != 0:  # pragma: no cover - l2 > 0 keeps the matrix positive definite
        raise DataValidationError(f"EASE: the regularised Gram matrix is not positive definite (LAPACK info {info}); "
                                  "raise 'l2'.")
    return np.triu(inv) + np.triu(inv, 1).T


class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder: B = argmin |X - XB|^2 + l2 |B|^2 subject to diag(B) = 0.

    Closed form: P = (X^T X + l2 I)^-1, B = -P / diag(P) off the diagonal. One n_items^3 inversion.
    """

    name: ClassVar[str] = "ease"
    _parameter_constraints: ClassVar[dict] = {"l2": Interval(float, 0, closed_low=False)}

    def __init__(self, *, l2: float = 500.0):
        self.l2 = l2

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        _check_size(self, train)
        x = train.matrix(binary=True)
        gram = (x.T @ x).toarray().astype(np.float32)
        gram[np.diag_indices_from(gram)] += self.l2
        p = _spd_inverse(gram)
        b = p / -np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        return _export(b, x, {})


class ItemKNN(Recommender):
    """Cosine item-item neighbourhood: each history item votes for its `neighbours` most similar items.

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink) over binary interactions.
    """

    name: ClassVar[str] = "itemknn"
    _parameter_constraints: ClassVar[dict] = {"neighbours": Interval(int, 1), "shrink": Interval(float, 0)}

    def __init__(self, *, neighbours: int = 100, shrink: float = 0.0):
        self.neighbours = neighbours
        self.shrink = shrink

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        _check_size(self, train)
        x = train.matrix(binary=True)
        counts = np.asarray(x.sum(axis=0)).ravel()
        norms = np.sqrt(counts)
        sim = (x.T @ x).toarray().astype(np.float32)
        sim /= np.outer(norms, norms) + self.shrink + 1e-12
        np.fill_diagonal(sim, 0.0)
        k = min(self.neighbours, train.n_items - 1)
        if k < train.n_items - 1:  # keep each item's k strongest neighbours (row j: whom item j votes for)
            drop = np.argpartition(-sim, k, axis=1)[:, k:]
            np.put_along_axis(sim, drop, 0.0, axis=1)
        return _export(sim, x, {})
