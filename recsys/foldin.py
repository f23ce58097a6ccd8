"""Fold-in: a user vector from a history of items and the item vectors alone (numpy only, no retraining).

Each model exports a `FoldIn` config with its vectors; the bundle stores it and `recsys.engine.Engine.fold_in`
applies it, so a user the model never saw (or a user with new feedback) is answered the way training would
have answered them. iALS training (`recsys.models.ials`) and fold-in share `confidence` and `penalty`, so the
serving-time solve repeats the training-time user solve exactly.

>>> import numpy as np
>>> items = np.eye(3, dtype=np.float32)
>>> FoldIn("mean").user_vector(items, np.array([0, 2]))
array([0.5, 0. , 0.5], dtype=float32)
>>> FoldIn("ridge", reg=1.0).user_vector(items, np.array([1]))
array([0. , 0.5, 0. ], dtype=float32)
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.linalg import lapack

from .exceptions import DataValidationError

if TYPE_CHECKING:
    from .sequence import SequenceEncoder

FOLDIN_METHODS = ("ridge", "mean", "indicator", "constant", "linear", "blend", "sequence")
CONFIDENCES = ("binary", "weight", "log", "power")


def confidence(weight: np.ndarray, kind: str, alpha: float = 1.0, epsilon: float = 1.0) -> np.ndarray:
    """Confidence c of each observed pair from its weight (rating, count, ...).

    'binary': c = 1 (the weight is ignored); 'weight': c = 1 + alpha * w (Hu et al.); 'log':
    c = 1 + alpha * log1p(w / epsilon) (counts spanning orders of magnitude); 'power': c = (w / epsilon) ** alpha
    (alpha 1: proportional to the weight, so a low rating counts for less than the unobserved weight alpha0 puts on
    every pair; 0: binary).

    >>> confidence(np.array([0.0, 3.0]), "weight", alpha=2.0)
    array([1., 7.], dtype=float32)
    """
    weight = np.asarray(weight, dtype=np.float64)
    if kind == "binary":
        return np.ones(len(weight), np.float32)
    if kind == "weight":
        return (1.0 + alpha * weight).astype(np.float32)
    if kind == "log":
        return (1.0 + alpha * np.log1p(weight / epsilon)).astype(np.float32)
    if kind == "power":
        return ((weight / epsilon) ** alpha).astype(np.float32)
    raise DataValidationError(f"confidence must be one of {CONFIDENCES}. Got {kind!r}.")


def penalty(reg: float, reg_exponent: float, unobserved_weight: float, n_history: np.ndarray | int,
            n_items: int) -> np.ndarray | float:
    """The ridge penalty of a row with `n_history` observed items: reg * (n + alpha0 * n_items) ** nu (Rendle et
    al. 2022's frequency-scaled regularisation; nu = 0 is a plain L2 penalty)."""
    return reg * (n_history + unobserved_weight * n_items) ** reg_exponent


@dataclass(frozen=True)
class FoldIn:
    """How a model's user vector follows from a history (the typed `foldin` entry of a bundle's manifest).

    method: 'ridge' solves a small ridge regression of the history on the item vectors, with
    `unobserved_weight` > 0 every other item a weighted zero target (as in iALS) and `target` the value an
    observed item is fitted to; 'mean' averages the history's item vectors; 'indicator' uses the weighted
    history itself as the user vector (item-item models, whose item vectors are item-item weights);
    'constant' uses the mean training user vector (models without personalisation); 'linear' sums the rows of
    the model's exported projection matrix over the distinct history items (spectral filters, whose user
    vector is a fixed linear map of the binary history row, as in training); 'blend' concatenates the fold-ins
    of its `parts` (`recsys.models.blend`), each on its own columns of the item vectors; 'sequence' runs a
    sequential model's encoder (`recsys.sequence.SequenceEncoder`, SASRec) on the history in its given order
    (weights are ignored: a sequence has no confidences).
    confidence (iALS only; None elsewhere): repeated items' weights are summed and mapped through `confidence`
    with `alpha` and `epsilon`, and the penalty scales with `reg_exponent` (see `penalty`).
    """

    method: str = "mean"
    reg: float = 0.1
    unobserved_weight: float = 0.0
    reg_exponent: float = 0.0
    confidence: str | None = None
    alpha: float = 1.0
    epsilon: float = 1.0
    target: float = 1.0
    parts: tuple[BlendPart, ...] = ()  # 'blend' only

    def __post_init__(self) -> None:
        if self.method not in FOLDIN_METHODS:
            raise DataValidationError(f"The fold-in 'method' must be one of {FOLDIN_METHODS}. Got {self.method!r}.")
        if self.confidence is not None and self.confidence not in CONFIDENCES:
            raise DataValidationError(f"The fold-in 'confidence' must be one of {CONFIDENCES} or None. "
                                      f"Got {self.confidence!r}.")
        for name in ("reg", "unobserved_weight", "reg_exponent", "alpha", "epsilon", "target"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise DataValidationError(f"The fold-in {name!r} must be a finite number. Got {value!r}.")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "parts", tuple(BlendPart.from_dict(p) for p in self.parts))
        if (self.method == "blend") != bool(self.parts):
            raise DataValidationError("The 'blend' fold-in needs its 'parts', and only it takes parts. "
                                      f"Got method {self.method!r} with {len(self.parts)} part(s).")

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form: `parts` (a list) only for a blend, so other models' manifests are unchanged."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "parts"}
        if self.parts:
            out["parts"] = [{**dataclasses.asdict(p), "foldin": p.foldin.to_dict()} for p in self.parts]
        return out

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | FoldIn | None) -> FoldIn:
        """From a manifest's `foldin` object; missing keys take the defaults, unknown keys are an error."""
        if isinstance(config, FoldIn):
            return config
        config = dict(config or {})
        unknown = sorted(set(config) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise DataValidationError(f"Unknown fold-in setting(s) {unknown}; known: "
                                      f"{[f.name for f in dataclasses.fields(cls)]}.")
        return cls(**config)

    def check(self, item_vectors: np.ndarray, projection: np.ndarray | None = None,
              sequence: SequenceEncoder | None = None) -> None:
        """Raise DataValidationError unless the arrays this fold-in needs are there: the 'linear' method's
        projection, one row per item; the 'sequence' method's encoder (a blend's part's too), as wide as the
        item vectors (or as its part's columns)."""
        if self.method == "linear" and (projection is None or projection.shape != item_vectors.shape):
            raise DataValidationError(f"The 'linear' fold-in needs a projection of shape {item_vectors.shape} "
                                      f"(one row per item). Got {None if projection is None else projection.shape}.")
        widths = [item_vectors.shape[1]] if self.method == "sequence" else \
            [p.dims for p in self.parts if p.foldin.method == "sequence"]
        if widths and (sequence is None or sequence.factors != widths[0] or len(widths) > 1):
            raise DataValidationError(f"The 'sequence' fold-in needs one sequence encoder of {widths[0]} factors "
                                      "(a SASRec bundle's 'sequence' manifest entry and its arrays). Got "
                                      f"{None if sequence is None else f'{sequence.factors} factors'}.")

    def user_vector(self, item_vectors: np.ndarray, item_index: np.ndarray, weights: np.ndarray | None = None,
                    gramian: Callable[[], np.ndarray] | None = None, user_vectors: np.ndarray | None = None,
                    projection: np.ndarray | None = None, sequence: SequenceEncoder | None = None) -> np.ndarray:
        """The user vector for a history of item indices (with optional weights).

        gramian(columns=None): item_vectors[:, columns].T @ item_vectors[:, columns] (callers cache it; computed
        here when None). user_vectors: the training users' vectors, whose mean the 'constant' method (and an empty
        history) returns. projection: (n_items, d), what the 'linear' method sums. sequence: the encoder the
        'sequence' method runs, on `item_index` in its order (oldest first).
        """
        item_index = np.asarray(item_index, dtype=np.int64)
        if self.method == "constant" or len(item_index) == 0:
            if user_vectors is not None and len(user_vectors):
                return user_vectors.mean(axis=0)
            return np.zeros(item_vectors.shape[1], np.float32)
        if self.method == "blend":
            return _blend_user_vector(self, item_vectors, item_index, weights, gramian, user_vectors, projection,
                                      sequence)
        if self.method == "sequence":
            if sequence is None:
                raise DataValidationError("The 'sequence' fold-in needs the model's sequence encoder.")
            return sequence.encode(item_vectors, item_index)
        w = np.ones(len(item_index), np.float32) if weights is None else np.asarray(weights, np.float32)
        if self.method == "mean":
            return (w @ item_vectors[item_index]) / w.sum()
        if self.method == "linear":
            if projection is None:
                raise DataValidationError("The 'linear' fold-in needs the model's projection matrix "
                                          "(the bundle's 'foldin_projection' array).")
            return projection[np.unique(item_index)].sum(axis=0, dtype=np.float64).astype(np.float32)
        if self.method == "indicator":
            vector = np.zeros(item_vectors.shape[1], np.float32)
            np.add.at(vector, item_index, w)
            return vector
        _, w, hist, gram = self._ridge(item_vectors, item_index, w, gramian)
        return solve_spd(gram, hist.T @ (w * self.target)).astype(np.float32)

    def _ridge(self, item_vectors: np.ndarray, item_index: np.ndarray, w: np.ndarray,
               gramian: Callable[[], np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The 'ridge' solve's system for a history: (the item index of each row, its weight, its vector, G), the
        user vector being G^-1 sum_r w_r target y_r. iALS rows are the distinct items, weighted by confidence."""
        if self.confidence is not None:  # iALS: one confidence per distinct item, as in training
            item_index, inverse = np.unique(item_index, return_inverse=True)
            w = confidence(np.bincount(inverse, weights=w), self.confidence, self.alpha, self.epsilon)
        hist = item_vectors[item_index]
        reg = penalty(self.reg, self.reg_exponent, self.unobserved_weight, len(item_index), len(item_vectors))
        gram = hist.T @ (hist * w[:, None]) + reg * np.eye(hist.shape[1], dtype=np.float32)
        if self.unobserved_weight:  # every item not in the history pulls its score towards 0 with this weight
            gram += self.unobserved_weight * (gramian() if gramian is not None else item_vectors.T @ item_vectors)
        return item_index, w, hist, gram

    def contributions(self, item_vectors: np.ndarray, item_index: np.ndarray, targets: np.ndarray,
                      weights: np.ndarray | None = None, gramian: Callable[[], np.ndarray] | None = None,
                      projection: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Why the folded-in user scores `targets` (item indices) as they do: (history items, contributions),
        the distinct history item indices and a (n_history, n_targets) matrix whose column t sums to the
        user_vector's score of target t. Every method is linear in its history once the history is fixed:
        'mean' weights each item's vector, 'linear' sums projection rows, 'indicator' reads item-item weights,
        'ridge' (iALS) is (G^-1 sum_j c_j y_j) . y_t with G the history's own system, so item j contributes
        c_j y_j . G^-1 y_t (implicit's `explain`). 'constant' has no contributions (all zeros), nor has
        'sequence': its transformer is not linear in the history, so no split of a score is exact."""
        item_index = np.asarray(item_index, dtype=np.int64)
        w = np.ones(len(item_index), np.float32) if weights is None else np.asarray(weights, np.float32)
        distinct, inverse = np.unique(item_index, return_inverse=True)
        summed = np.bincount(inverse, weights=w, minlength=len(distinct))  # repeated items' weights add up
        targets = np.asarray(targets, dtype=np.int64)
        out = np.zeros((len(distinct), len(targets)))
        if self.method in ("constant", "sequence") or not len(distinct):
            return distinct, out
        if self.method == "blend":
            for part, _, vectors, part_gramian, part_projection in _parts(self, item_vectors, gramian, projection):
                out += part.user_scale * part.foldin.contributions(vectors, item_index, targets, weights,
                                                                   part_gramian, part_projection)[1]
            return distinct, out
        y_t = np.asarray(item_vectors[targets], np.float64)
        hist = np.asarray(item_vectors[distinct], np.float64)
        if self.method == "mean":
            return distinct, (summed / w.sum())[:, None] * (hist @ y_t.T)
        if self.method == "linear":
            return distinct, np.asarray(projection[distinct], np.float64) @ y_t.T
        if self.method == "indicator":
            return distinct, summed[:, None] * np.asarray(item_vectors[targets][:, distinct], np.float64).T
        rows, w_rows, hist_rows, gram = self._ridge(item_vectors, item_index, w, gramian)
        solved = np.linalg.solve(np.asarray(gram, np.float64), y_t.T)  # G^-1 y_t for every target at once
        np.add.at(out, np.searchsorted(distinct, rows),
                  (np.asarray(w_rows, np.float64) * self.target)[:, None] * (hist_rows @ solved))
        return distinct, out


@dataclass(frozen=True)
class BlendPart:
    """One model inside a blend: its fold-in, how many columns of the blend's vectors are its own, and the
    scale the blend put on its user columns (its item columns are its own item vectors as they are, so the
    blend's score is the sum of user_scale x its scores)."""

    foldin: FoldIn
    dims: int
    user_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "foldin", FoldIn.from_dict(self.foldin))
        if self.foldin.method == "blend":
            raise DataValidationError("A blend's part cannot itself be a blend.")
        if isinstance(self.dims, bool) or not isinstance(self.dims, (int, np.integer)) or self.dims < 1:
            raise DataValidationError(f"A blend part's 'dims' must be an int >= 1. Got {self.dims!r}.")
        value = self.user_scale
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise DataValidationError(f"A blend part's 'user_scale' must be a finite number. Got {value!r}.")
        object.__setattr__(self, "user_scale", float(value))
        object.__setattr__(self, "dims", int(self.dims))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | BlendPart) -> BlendPart:
        if isinstance(config, BlendPart):
            return config
        config = dict(config)
        unknown = sorted(set(config) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise DataValidationError(f"Unknown blend part setting(s) {unknown}; known: "
                                      f"{[f.name for f in dataclasses.fields(cls)]}.")
        return cls(**config)


def _blend_user_vector(foldin: FoldIn, item_vectors: np.ndarray, item_index: np.ndarray,
                       weights: np.ndarray | None, gramian: Callable[..., np.ndarray] | None,
                       user_vectors: np.ndarray | None, projection: np.ndarray | None,
                       sequence: SequenceEncoder | None) -> np.ndarray:
    """Each part's own fold-in on its own columns (views, never copies: this runs per request), scaled as the
    blend scaled its user vectors; a 'sequence' part runs the blend's one encoder."""
    if sum(p.dims for p in foldin.parts) != item_vectors.shape[1]:
        raise DataValidationError(f"The blend's parts cover {sum(p.dims for p in foldin.parts)} columns; the item "
                                  f"vectors have {item_vectors.shape[1]}.")
    out = []
    for part, cols, vectors, part_gramian, part_projection in _parts(foldin, item_vectors, gramian, projection):
        vector = part.foldin.user_vector(
            vectors, item_index, weights, part_gramian,
            None if user_vectors is None else user_vectors[:, cols] / (part.user_scale or 1.0), part_projection,
            sequence)
        out.append(np.asarray(vector, np.float32) * part.user_scale)
    return np.concatenate(out).astype(np.float32)


def _parts(foldin: FoldIn, item_vectors: np.ndarray, gramian: Callable[..., np.ndarray] | None,
           projection: np.ndarray | None):
    """Each part of a blend with its columns, its own item vectors (views), gramian and projection."""
    start = 0
    for part in foldin.parts:
        cols = slice(start, start + part.dims)
        start += part.dims
        yield (part, cols, item_vectors[:, cols], None if gramian is None else functools.partial(gramian, cols),
               None if projection is None else projection[:, cols])


def solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (float64) with a @ x = b for a symmetric positive definite `a` (a ridge system): LAPACK's Cholesky
    solve in float64, faster than np.linalg.solve's LU in float32 (benchmarks/scoring.py); a matrix that is not
    positive definite (no penalty, too short a history) goes to np.linalg.solve, which raises for a singular
    one as before."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _, x, info = lapack.dposv(a, b)
    return x if info == 0 else np.linalg.solve(a, b)
