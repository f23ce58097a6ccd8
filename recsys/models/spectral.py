"""Training-free spectral collaborative filtering: GF-CF (Shen et al. 2021, "How Powerful is Graph Convolution for
Recommendation?") in the engine's embedding form.

With the binary interaction matrix R (users x items), user and item degrees D_U, D_I and the normalised matrix
R~ = D_U^-b R D_I^-b (b = `normalization`, 1/2 in the paper), GF-CF scores user u's row r_u as

    s_u = r_u ( P~  +  alpha D_I^-1/2 V_k V_k^T D_I^1/2 ),      P~ = R~^T R~ = V diag(sigma^2) V^T,

a linear low-pass filter (the normalised item-item co-occurrence) plus an ideal low-pass filter made of the top
k = `low_pass` right singular vectors of R~. Both are functions of R~'s spectrum, so the model is exported as
vectors: with V truncated to its top `factors` singular vectors (exact when `factors` reaches the rank),

    user vector  = [ r_u V diag((sigma / sigma_1)^2p),   alpha r_u D_I^-1/2 V_k ]
    item vector  = [ V,                                   D_I^1/2 V_k            ]

and the dot product is s_u (the linear filter is scaled so its top eigenvalue is 1, as it is for b = 1/2, so
that `alpha` means the same at every normalisation). `power` p = 1 is GF-CF's linear filter; p > 1 damps the
high frequencies further (the sharper low-pass that BSPM's blurring and ChebyCF's polynomial filters reach on
the same spectrum), p < 1 lets more through. A user vector is a fixed linear map of the binary history, so an unseen user folds in exactly
(fold-in 'linear': the sum of the history items' rows of the exported projection).

The singular vectors come from an eigendecomposition of the smaller Gram matrix when one side has at most
`EXACT_SIDE` rows (exact and deterministic), else from a seeded randomized SVD (Halko et al. 2011). Memory:
the exported item vectors and projection are 2 x n_items x (factors + low_pass) float32.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from ..data import Interactions
from ..foldin import FoldIn
from ..params import Float, Int, Interval
from .base import Exported, Recommender

log = logging.getLogger("recsys")
EXACT_SIDE = 4096  # an eigendecomposition of an m x m Gram matrix up to this m: a few seconds on 2 cores
# The last decomposition, reused by a fit of the same matrix that needs no more vectors (a tuner's trials differ
# mostly in alpha, power and how many vectors they use: one SVD serves them all). One entry: V is n_cols x rank.
_last: dict[str, Any] = {}


def normalised_matrix(x: sp.csr_matrix, exponent: float = 0.5) -> tuple[sp.csr_matrix, np.ndarray]:
    """R~ = D_U^-b R D_I^-b of a binary matrix, and the item degrees D_I (empty rows and columns stay zero)."""
    users = np.asarray(x.sum(axis=1)).ravel()
    items = np.asarray(x.sum(axis=0)).ravel()
    du = np.where(users > 0, np.maximum(users, 1e-12) ** -exponent, 0.0)
    di = np.where(items > 0, np.maximum(items, 1e-12) ** -exponent, 0.0)
    return sp.csr_matrix(sp.diags(du) @ x @ sp.diags(di)), items


def cached_top_singular(matrix: sp.csr_matrix, rank: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`top_singular`, reusing the last result when `matrix` is the same (shape, structure and values) and it
    holds at least `rank` vectors. Exact either way: the leading vectors of a larger basis are the same vectors
    (the randomized path oversamples, so its leading vectors are at least as accurate)."""
    key = (matrix.shape, matrix.nnz, seed, hashlib.sha1(matrix.indptr.tobytes() + matrix.indices.tobytes()
                                                         + matrix.data.tobytes()).hexdigest())
    if _last.get("key") == key and _last["rank"] >= rank:
        return _last["sigma"][:rank], _last["vectors"][:, :rank]
    sigma, vectors = top_singular(matrix, rank, seed)
    _last.clear()
    _last.update(key=key, rank=rank, sigma=sigma, vectors=vectors)
    return sigma, vectors


def forget() -> None:
    """Drop the kept decomposition (`cached_top_singular`): the tuner calls this when its search is over."""
    _last.clear()


def top_singular(matrix: sp.csr_matrix, rank: int, seed: int = 0, n_iter: int = 4
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The top `rank` singular values (descending, float64) and right singular vectors (n_cols, rank) of
    `matrix`: exact from the smaller Gram matrix when a side has at most EXACT_SIDE rows, else a seeded
    randomized SVD with `n_iter` power iterations. Signs are fixed (largest entry positive) so that the result
    does not depend on the solver's."""
    n_rows, n_cols = matrix.shape
    rank = max(1, min(rank, n_rows, n_cols))
    if min(n_rows, n_cols) <= EXACT_SIDE:
        m = matrix.astype(np.float64)
        small_side_rows = n_rows <= n_cols
        gram = (m @ m.T if small_side_rows else m.T @ m).toarray()
        values, vectors = np.linalg.eigh(gram)
        order = np.argsort(values)[::-1][:rank]
        sigma = np.sqrt(np.clip(values[order], 0.0, None))
        vectors = vectors[:, order]
        if small_side_rows:  # V = R^T U / sigma
            keep = sigma > 1e-10 * max(sigma[0], 1e-300)
            sigma, vectors = sigma[keep], vectors[:, keep]
            vectors = np.asarray(m.T @ vectors) / sigma
    else:
        from sklearn.utils.extmath import randomized_svd

        # float32: a third faster than float64 (22 s against 34 s at rank 512 on 30k x 40k, 1M pairs), and the
        # vectors are exported in float32 anyway
        _, sigma, vt = randomized_svd(matrix.astype(np.float32), rank, n_oversamples=max(10, rank // 4),
                                      n_iter=n_iter, random_state=seed)
        sigma, vectors = sigma.astype(np.float64), vt.T.astype(np.float64)
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return sigma, vectors * np.where(signs == 0, 1.0, signs)


class SpectralCF(Recommender):
    """GF-CF: a linear low-pass filter plus `alpha` x an ideal low-pass filter on the normalised interaction
    matrix's spectrum (see the module docstring). Training-free: one truncated SVD, no epochs."""

    name: ClassVar[str] = "spectral"
    _parameter_constraints: ClassVar[dict] = {
        "factors": Interval(int, 1), "low_pass": Interval(int, 0), "alpha": Interval(float, 0),
        "power": Interval(float, 0), "normalization": Interval(float, 0, 1), "seed": Interval(int, 0)}
    # The basis: at most 1,024 + 512 dimensions (its vectors and projection are n_items wide each: 1.8 GiB at
    # 296k items), so a wide basis is a limit, not an edge to widen
    search_space: ClassVar[dict] = {
        "factors": Int(16, 1024, log=True, limits=("high",)), "low_pass": Int(8, 512, log=True, limits=("high",)),
        "alpha": Float(0.0, 2.0, limits=("low",)), "power": Float(0.25, 4.0, log=True),
        "normalization": Float(0.0, 0.75, limits=("low",))}
    # GF-CF with less normalisation (denser logs want it), the linear filter alone, and a wide basis with a
    # narrow ideal low-pass
    start_points: ClassVar[tuple] = ({"normalization": 0.25, "alpha": 0.0}, {"alpha": 0.0}, {"low_pass": 64},
                                     {"factors": 128})

    def __init__(self, *, factors: int = 512, low_pass: int = 256, alpha: float = 0.3, power: float = 1.0,
                 normalization: float = 0.5, seed: int = 0):
        self.factors = factors
        self.low_pass = low_pass
        self.alpha = alpha
        self.power = power
        self.normalization = normalization
        self.seed = seed

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        x = train.matrix(binary=True).astype(np.float64)
        norm, degrees = normalised_matrix(x, self.normalization)
        sigma, v = cached_top_singular(norm, max(self.factors, self.low_pass), self.seed)
        linear = min(self.factors, len(sigma))
        ideal = min(self.low_pass, len(sigma))
        d = np.sqrt(np.maximum(degrees, 1e-12))[:, None]
        # GF-CF's ideal term is D_I^-1/2 ... D_I^1/2 whatever R~'s normalisation exponent
        item = np.hstack([v[:, :linear], d * v[:, :ideal]])
        scale = sigma[:linear] ** (2 * self.power) / max(sigma[0], 1e-300) ** (2 * self.power)
        projection = np.hstack([v[:, :linear] * scale, self.alpha * v[:, :ideal] / d])
        projection[degrees == 0] = 0.0
        users = np.asarray(x @ projection)
        extra = {"rank": len(sigma), "top_singular_values": [round(float(s), 6) for s in sigma[:5]]}
        return Exported(item.astype(np.float32), users.astype(np.float32), foldin=FoldIn("linear"),
                        similarity="cosine", similarity_dims=linear, extra=extra,
                        projection=projection.astype(np.float32))
