"""The generated logs of the quality suite (benchmarks/quality.py --suite), plus the bundled MovieLens data.

Each log is one recsys.datasets.make_synthetic draw, post-processed for the shape it stands for:

  weights    "binary" (no weight column), "rating" (the 1-5 rating column), "count" (a count column,
             1 + Poisson growing with the rating), "events" (the same counts written as repeated rows, which
             read_interactions sums into a weight; every repeat a little later than the first);
  timestamps "seconds" (make_synthetic's own), "none" (column dropped), "day" (floored to the day: ties),
             "equal" (one timestamp for every row).

build(spec) returns the frame exactly as a caller would hand it to recsys (read_interactions does the rest),
so the frame shapes can be checked without training (tests/test_quality_benchmark.py).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.data import Interactions, read_interactions
from recsys.datasets import load_movielens, make_synthetic

log = logging.getLogger("benchmarks.quality")

WEIGHT_KINDS = ("binary", "rating", "count", "events")
TIME_KINDS = ("seconds", "none", "day", "equal")
MOVIELENS = "movielens"


@dataclass(frozen=True)
class LogSpec:
    key: str                  # short name for --logs
    name: str                 # what the table shows
    why: str                  # the shape it tests (README)
    n_users: int
    n_items: int
    interactions_per_user: float
    popularity_skew: float    # power-law exponent of item popularity
    n_factors: int            # planted clusters
    temperature: float        # lower = users stick to their cluster (easier)
    weights: str
    times: str
    seed: int
    days: int = 365           # the time window (make_synthetic): shorter = more ties once floored to the day

    def smoke(self) -> LogSpec:
        """A tiny log of the same shape (weights, timestamps, skew, temperature) for the test."""
        return dataclasses.replace(self, n_users=120, n_items=max(100, self.n_items // 50),
                                   interactions_per_user=min(self.interactions_per_user, 20.0))


SUITE: tuple[LogSpec, ...] = (
    LogSpec("steep-short", "steep-pop short-hist 2k items binary untimed",
            "many users with ~6 items each, a steep head (exponent 1.2), no weights, no timestamps: the random "
            "holdout, the cold-ish user", 6000, 2000, 6, 1.2, 16, 0.3, "binary", "none", 11),
    LogSpec("flat-long", "flat-pop long-hist 1k items rating timed",
            "few users with ~150 items each on a small, flat catalogue (exponent 0.3): taste, not popularity, "
            "decides; ratings as weights", 400, 1000, 150, 0.3, 8, 0.5, "rating", "seconds", 12),
    LogSpec("mid-count-day", "mid-pop mid-hist 10k items count day-ties",
            "a count column (repeat consumption) and day-granular timestamps, so many of a user's items tie "
            "in time (a 30-day window: about two thirds of the rows share their user's day with another)",
            3000, 10000, 25, 0.8, 24, 0.25, "count", "day", 13, days=30),
    LogSpec("tail-50k", "mild-pop short-hist 50k catalogue binary timed",
            "a 50k-item catalogue drawn ~10 times per user (about 41.6k items are ever drawn, most a handful "
            "of times: the long tail); item-item peers need a 41.6k x 41.6k matrix",
            12000, 50000, 10, 0.5, 32, 0.2, "binary", "seconds", 14),
    LogSpec("events-tied", "steep-pop mid-hist 5k items repeated-row events all-tied",
            "an event log: one row per event, repeats summed into counts, and every timestamp equal (an export "
            "that lost its times): the order carries nothing", 2500, 5000, 20, 1.0, 12, 0.35, "events", "equal",
            15),
    LogSpec("noisy-very-long", "flat-pop very-long-hist 3k items rating timed weak-signal",
            "~600 items per user and a weak planted structure (4 clusters, temperature 1.0): little to learn "
            "beyond popularity, for every model", 150, 3000, 600, 0.6, 4, 1.0, "rating", "seconds", 16),
    LogSpec("hyper-pop-day", "very-steep-pop mid-hist 20k catalogue rating day-ties",
            "a very steep head (exponent 1.5) over a 20k catalogue (about 7.6k items are ever drawn), "
            "strong clusters, ratings, day ties over 90 days (a quarter of the rows tied): popularity is a "
            "strong baseline", 5000, 20000, 20, 1.5, 16, 0.15, "rating", "day", 17, days=90),
)
KEYS: tuple[str, ...] = (*(s.key for s in SUITE), MOVIELENS)


def build(spec: LogSpec) -> pd.DataFrame:
    """The log's frame: user, item, then weight ('rating' or 'count') and 'timestamp' when the shape has them."""
    frame = make_synthetic(n_users=spec.n_users, n_items=spec.n_items, n_factors=spec.n_factors,
                           interactions_per_user=spec.interactions_per_user,
                           popularity_skew=spec.popularity_skew, seed=spec.seed, days=spec.days,
                           temperature=spec.temperature).interactions
    rng = np.random.default_rng(spec.seed)
    if spec.weights in ("count", "events"):
        counts = 1 + rng.poisson(0.5 * (frame["rating"].to_numpy() - 1))  # liked items come back more often
        if spec.weights == "count":
            frame = frame.assign(count=counts.astype(np.int64))
        else:
            frame = frame.loc[frame.index.repeat(counts)].reset_index(drop=True)
            repeat = frame.groupby(["user", "item"], sort=False).cumcount().to_numpy()
            later = pd.to_timedelta(repeat * rng.uniform(0, 3 * 86_400, len(frame)), unit="s").round("s")
            frame["timestamp"] = frame["timestamp"] + later
    if spec.weights != "rating":
        frame = frame.drop(columns=["rating"])
    if spec.times == "none":
        frame = frame.drop(columns=["timestamp"])
    elif spec.times == "day":
        frame["timestamp"] = frame["timestamp"].dt.floor("D")
    elif spec.times == "equal":
        frame["timestamp"] = pd.Timestamp("2024-01-01", tz="UTC")
    return frame


def weight_col(spec: LogSpec) -> str | None:
    return {"rating": "rating", "count": "count"}.get(spec.weights)


def read(spec: LogSpec) -> Interactions:
    frame = build(spec)
    inter = read_interactions(frame, user_col="user", item_col="item", weight_col=weight_col(spec),
                              time_col=None if spec.times == "none" else "timestamp")
    log.info("%s: %d rows -> %d interactions, %d users x %d items", spec.name, len(frame), inter.nnz,
             inter.n_users, inter.n_items)
    return inter


def read_movielens(smoke: bool) -> Interactions:
    """The bundled ml-latest-small, read as `recsys train` reads it (ratings, timestamps, item metadata);
    with `smoke`, its first 40 users only."""
    ds = load_movielens("ml-latest-small")
    frame = ds.interactions
    if smoke:
        frame = frame[frame["user"].isin(frame["user"].unique()[:40])]
    return read_interactions(frame, user_col="user", item_col="item", weight_col="rating",
                             time_col="timestamp", item_metadata=ds.items)
