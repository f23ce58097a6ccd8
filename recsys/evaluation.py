"""Offline evaluation: full ranking over the catalogue, the user's training items excluded.

Accuracy (Precision, Recall, NDCG, MAP, HitRate) and what the lists are made of (coverage, novelty,
intra-list diversity, long-tail share, average recommended popularity; `recsys.metrics.beyond_accuracy`,
popularity counted on the training interactions).

Ranks through `recsys.engine.Engine`, the same path the server uses. Metric definitions live in
`recsys.metrics` (Precision, Recall = hits / min(K, |test|), binary NDCG, MAP, HitRate, coverage).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .data import Interactions
from .engine import Engine
from .exceptions import DataValidationError
from .metrics import beyond_accuracy, per_user_metrics, ranking_metrics


def _engine(model: Any) -> Engine:
    if isinstance(model, Engine):
        return model
    check = getattr(model, "_check_fitted", None)
    if check is None:
        raise DataValidationError(f"evaluate expects a fitted model or an Engine. Got {type(model).__name__}.")
    return check()


def evaluate(model: Any, test: Interactions, k: int | Sequence[int] = 10, *, train: Interactions | None = None,
             max_users: int | None = None, seed: int = 0) -> dict[str, float]:
    """Ranking metrics of `model` (fitted model or Engine) on `test`.

    Items each user interacted with in `train` (default: the model's own training interactions) are
    excluded from their ranking. `test` must share the model's id maps (use the recsys.data splits).
    max_users: evaluate a random sample of test users (for fast validation during training).

    >>> from recsys.data import from_arrays, random_split
    >>> from recsys.models import Popularity
    >>> log = from_arrays(np.repeat(["u1", "u2", "u3"], 3), np.array(list("abcabdabe")))
    >>> train, test = random_split(log, None, test_k=1, seed=0)
    >>> metrics = evaluate(Popularity().fit(train), test, k=[1, 3])
    >>> [name for name in metrics if name.endswith("@3")]  # doctest: +NORMALIZE_WHITESPACE
    ['precision@3', 'recall@3', 'ndcg@3', 'map@3', 'hit_rate@3', 'coverage@3', 'novelty@3', 'long_tail@3',
     'arp@3', 'diversity@3']
    """
    engine, seen, relevant, users, ks, top = _rank(model, test, k, train, max_users, seed)
    popularity = np.asarray((seen > 0).sum(axis=0), np.float64).ravel()
    return {**ranking_metrics(top, relevant[users], ks, n_items=engine.n_items),
            **beyond_accuracy(top, popularity, ks, item_vectors=engine.similarity_vectors, n_users=seen.shape[0])}


def evaluate_per_user(model: Any, test: Interactions, k: int | Sequence[int] = 10, *,
                      train: Interactions | None = None) -> dict[str, np.ndarray]:
    """`evaluate`'s accuracy metrics per user: {"user": the indices of the users with test items, in order,
    "ndcg@10": their values, ...}. Two models scored on the same test share "user", so their arrays pair up
    (`ratio_interval`)."""
    _, _, relevant, users, ks, top = _rank(model, test, k, train, None, 0)
    return {"user": users, **per_user_metrics(top, relevant[users], ks)}


def ratio_interval(ours: np.ndarray, theirs: np.ndarray, level: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean(ours) / mean(theirs), low, high): the ratio of two models' mean metric over the same users and its
    paired bootstrap interval (users resampled with replacement, both models together; percentiles at
    (1 - level) / 2 and (1 + level) / 2). A ratio whose interval holds 1 is not a measured difference."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape or ours.ndim != 1 or not len(ours):
        raise DataValidationError(f"ratio_interval needs two equal-length arrays of per-user values (one per "
                                  f"user, paired). Got shapes {ours.shape} and {theirs.shape}.")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ours), size=(n_resamples, len(ours)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = ours[picks].mean(axis=1) / theirs[picks].mean(axis=1)
        ratio = ours.mean() / theirs.mean()
    # 'nearest': a resample whose denominator is 0 gives an infinite ratio, which interpolation would turn to NaN
    low, high = np.nanpercentile(ratios, [50 * (1 - level), 50 * (1 + level)], method="nearest")
    return float(ratio), float(low), float(high)


def _rank(model: Any, test: Interactions, k: int | Sequence[int], train: Interactions | None,
          max_users: int | None, seed: int):
    """What both evaluations rank: (engine, seen, relevant, users, ks, each user's top max(ks) items)."""
    engine = _engine(model)
    if test.users != engine.users or test.items != engine.items:
        raise DataValidationError("test must share the model's id maps: split one Interactions with "
                                  "recsys.data.temporal_split / random_split and fit on the train part.")
    seen = engine.seen if train is None else train.matrix(binary=True)
    relevant = test.matrix(binary=True)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    top, _ = engine.retriever.search(engine.user_vectors[users], max(ks), exclude=seen[users])
    return engine, seen, relevant, users, ks, top


def compare(models: dict[str, Any], test: Interactions, k: int | Sequence[int] = 10,
            train: Interactions | None = None) -> pd.DataFrame:
    """One row per model, one column per metric: a side-by-side table."""
    rows = {name: evaluate(m, test, k, train=train) for name, m in models.items()}
    return pd.DataFrame(rows).T


def evaluate_by_activity(model: Any, test: Interactions, k: int = 10, *,
                         edges: Sequence[float] = (1, 20, 50, 100, 250, np.inf)) -> pd.DataFrame:
    """`evaluate` per bucket of users by their number of training interactions, [edges[i], edges[i+1]).

    One row per non-empty bucket: its users, and the metrics of `evaluate` on them alone.
    """
    engine = _engine(model)
    activity = np.diff(engine.seen.indptr)
    relevant = test.matrix(binary=True)
    rows = {}
    for low, high in itertools.pairwise(edges):
        users = np.flatnonzero((activity >= low) & (activity < high) & (np.diff(relevant.indptr) > 0))
        if not len(users):
            continue
        part = test.subset(np.isin(test.user_index, users))
        label = f"{int(low)}-{int(high) - 1}" if np.isfinite(high) else f"{int(low)}+"
        rows[label] = evaluate(engine, part, k)
    return pd.DataFrame(rows).T


def recommendation_counts(model: Any, k: int = 10, users: np.ndarray | None = None) -> np.ndarray:
    """How often each item is in the top k of `users` (default: every training user): what a model hands out,
    to set beside the catalogue's popularity curve."""
    engine = _engine(model)
    users = np.arange(len(engine.users)) if users is None else np.asarray(users)
    top, _ = engine.recommend_indices(users, k)
    return np.bincount(top[top >= 0], minlength=engine.n_items)
