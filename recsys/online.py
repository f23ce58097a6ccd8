"""Online metrics from what the service served (`served_lists`, recorded by `server.recording`) and what users did
next (`feedback_events`): `online_report(store)` is what `recsys report` prints.

For each served list: the items the same user interacted with after it was served, within `horizon_s` seconds,
are its relevant items. Per model version (and A/B variant, when recorded): the lists and users served, the hit
rate (lists with at least one relevant item among those served), NDCG of the served order against the relevant
items (binary, over the list's own length), coverage (distinct items served), the share of fallback answers, and
the share of lists named by a later event's `request_id` (the client reported a response to that very answer).
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from .exceptions import DataValidationError
from .feedback import FeedbackStore
from .metrics import list_ndcg

HORIZON_S = 7 * 24 * 3600.0  # a list is judged by what its user did in the week after it was served


def online_report(store: FeedbackStore | str, since: float | dt.datetime | None = None,
                  horizon_s: float = HORIZON_S) -> pd.DataFrame:
    """One row per (model_version, variant): lists, users, hit_rate, ndcg, coverage, fallback_share,
    attributed_share (see the module docstring). `since`: only lists served from then (Unix seconds or a
    datetime)."""
    served = scored_lists(store, since, horizon_s)
    columns = ["model_version", "variant", "lists", "users", "hit_rate", "ndcg", "coverage", "fallback_share",
               "attributed_share"]
    if served.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (version, variant), group in served.groupby(["model_version", served["variant"].fillna("")], sort=True):
        rows.append({"model_version": version, "variant": variant or None, "lists": len(group),
                     "users": group["user"].nunique(), "hit_rate": group["hit"].mean(), "ndcg": group["ndcg"].mean(),
                     "coverage": len({i for items in group["items"] for i in items}),
                     "fallback_share": group["fallback"].mean(), "attributed_share": group["attributed"].mean()})
    return pd.DataFrame(rows, columns=columns)


def compare_variants(store: FeedbackStore | str, baseline: str = "A", metric: str = "hit",
                     since: float | dt.datetime | None = None, horizon_s: float = HORIZON_S, level: float = 0.95,
                     n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each recorded A/B variant against `baseline`: the difference of their mean `metric` per served list
    ('hit' or 'ndcg'), with a bootstrap interval (each variant's lists resampled on their own). A variant whose
    interval excludes 0 differs from the baseline at that level."""
    if metric not in ("hit", "ndcg"):
        raise DataValidationError(f"The 'metric' parameter of compare_variants must be 'hit' or 'ndcg'. Got {metric!r}.")
    served = scored_lists(store, since, horizon_s)
    values = {v: g[metric].to_numpy() for v, g in served.groupby(served["variant"].fillna(""))}
    if baseline not in values:
        raise DataValidationError(f"No served lists of variant {baseline!r} are recorded. Recorded variants: "
                                  f"{sorted(v for v in values if v)}.")
    rng = np.random.default_rng(seed)
    base = values[baseline]
    base_means = base[rng.integers(0, len(base), (n_resamples, len(base)))].mean(axis=1)
    rows = []
    for variant, x in sorted(values.items()):
        if variant in (baseline, ""):
            continue
        diffs = x[rng.integers(0, len(x), (n_resamples, len(x)))].mean(axis=1) - base_means
        low, high = np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)])
        rows.append({"variant": variant, "baseline": baseline, "metric": metric, "lists": len(x),
                     "baseline_lists": len(base), "value": x.mean(), "baseline_value": base.mean(),
                     "difference": x.mean() - base.mean(), "low": low, "high": high})
    return pd.DataFrame(rows)


def scored_lists(store: FeedbackStore | str, since: float | dt.datetime | None = None,
                 horizon_s: float = HORIZON_S) -> pd.DataFrame:
    """The recorded lists (`FeedbackStore.served_frame`) with what their users did next: `hit` (1 when one of the
    served items was used within `horizon_s`), `ndcg`, and `attributed` (a later event named the list)."""
    store = FeedbackStore(store) if isinstance(store, str) else store
    if isinstance(since, dt.datetime):
        since = since.timestamp()
    served = store.served_frame(since).assign(hit=0.0, ndcg=0.0, attributed=False)
    if served.empty:
        return served
    events = store.to_frame()
    events["ts"] = events["timestamp"].map(pd.Timestamp.timestamp)
    by_user = {user: (group["ts"].to_numpy(), group["item"].to_numpy()) for user, group in events.groupby("user")}
    named = set(events["request_id"].dropna())
    hit, gain = np.zeros(len(served)), np.zeros(len(served))
    for row, (user, items, ts) in enumerate(zip(served["user"], served["items"], served["ts"])):
        times, later_items = by_user.get(user, (np.empty(0), np.empty(0, object)))
        relevant = set(later_items[(times > ts) & (times <= ts + horizon_s)])
        hits = np.array([item in relevant for item in items], dtype=float)
        hit[row] = float(hits.any())
        gain[row] = list_ndcg(hits, len(relevant))
    served["hit"], served["ndcg"] = hit, gain
    served["attributed"] = served["request_id"].isin(named)
    return served
