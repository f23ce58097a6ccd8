"""What moved between two versions of a model: `drift(new, old)` compares two bundles (or Engines).

- the catalogue: items added and removed;
- per item (a seeded sample of up to `max_items` of the items both versions hold): the overlap of its k nearest
  neighbours among those shared items in both versions (cosine over each version's similarity vectors), its
  displacement after the old space is rotated onto the new one (orthogonal Procrustes over all shared items,
  unit vectors, the narrower space padded with zeros, so versions of different widths compare), and the ratio
  of its vector norms and its training popularity in each version;
- per user (a seeded sample of up to `max_users` of the users both versions know): the overlap of their top-k
  lists (Jaccard and rank-biased overlap, p = 0.9) and whether their top item changed;
- with `data` (a log both versions have not trained on, e.g. the next window: columns user and item), both
  versions' NDCG@k and Recall@k on it, over the users both know.

Thresholds (`THRESHOLDS`, overridable) turn into warnings: the share of items whose neighbour overlap is below
one half, the mean Jaccard of users' lists, the share of the old catalogue removed, and a relative fall of NDCG
on `data`. `recsys drift` prints the report and exits 1 when there is a warning (a gate for CI), else 0.

    report = drift("models/current", "models/20261201T000000Z-ials", k=10)
    report.moved(10)          # the items that moved most, with titles
    report.warnings           # [] when nothing crossed a threshold
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .engine import Engine, load_engine
from .exceptions import DataValidationError
from .metrics import list_ndcg

# item neighbour overlap below NEIGHBOUR_OVERLAP counts an item as moved
NEIGHBOUR_OVERLAP = 0.5
# Measured (iALS, docs/monitoring.md): a retrain with another seed moved 31 % of ml-latest-small's items (69 % of a
# small generated log's) and kept 38-45 % of users' top-10 lists; a model of a later window moved 97-100 % and kept
# under 15 %. The defaults sit between, so a reseed does not warn and a changed log does.
THRESHOLDS = {
    "moved_share": 0.8,     # warn when more than this share of the sampled items moved
    "user_jaccard": 0.25,   # warn when users' top-k lists share less than this (mean Jaccard)
    "removed_share": 0.1,   # warn when more than this share of the old catalogue is gone
    "ndcg_drop": 0.05,      # warn when NDCG@k on `data` fell by more than this share
}
RBO_P = 0.9
SCORE_BLOCK = 1 << 24  # score-matrix cells per block of neighbour queries


@dataclass
class DriftReport:
    """What `drift` measured; `items` holds one row per sampled shared item."""

    added: list[str]
    removed: list[str]
    shared: int
    items: pd.DataFrame
    users: dict[str, float]
    metrics: dict[str, dict[str, float]] | None
    summary: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def moved(self, n: int = 10) -> pd.DataFrame:
        """The `n` items that moved most: fewest shared neighbours first, then the largest displacement."""
        return self.items.sort_values(["neighbour_overlap", "displacement"], ascending=[True, False]).head(n)

    def to_dict(self, n_moved: int = 20) -> dict[str, Any]:
        """JSON-able: the summary, warnings, users, metrics, counts and the `n_moved` items that moved most."""
        return {"summary": self.summary, "warnings": self.warnings, "users": self.users, "metrics": self.metrics,
                "added": len(self.added), "removed": len(self.removed), "shared": self.shared,
                "added_sample": self.added[:20], "removed_sample": self.removed[:20],
                "moved": self.moved(n_moved).to_dict(orient="records")}


def drift(new: Engine | str | Path, old: Engine | str | Path, *, k: int = 10, max_items: int = 5000,
          max_users: int = 1000, data: pd.DataFrame | None = None, thresholds: Mapping[str, float] | None = None,
          seed: int = 0) -> DriftReport:
    """Compare bundle (or Engine) `new` with `old` (see the module docstring)."""
    unknown = sorted(set(thresholds or {}) - set(THRESHOLDS))
    if unknown:
        raise DataValidationError(f"Unknown drift threshold(s) {unknown}. Available: {sorted(THRESHOLDS)}.")
    limits = {**THRESHOLDS, **(thresholds or {})}
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataValidationError(f"The 'k' parameter of drift must be an int >= 1. Got {k!r}.")
    new_engine, old_engine = _engine(new), _engine(old)
    new_ids, old_ids = set(new_engine.items.ids), set(old_engine.items.ids)
    shared = np.array(sorted(new_ids & old_ids), dtype=object)
    if len(shared) <= k:
        raise DataValidationError(f"The two versions share {len(shared)} items; drift compares neighbourhoods of "
                                  f"k={k} among shared items, so it needs more than {k}.")
    rng = np.random.default_rng(seed)
    items = _item_table(new_engine, old_engine, shared, k, max_items, rng)
    users = _user_overlap(new_engine, old_engine, k, max_users, rng)
    metrics = None if data is None else {"new": _metrics_on(new_engine, data, k, old_engine),
                                         "old": _metrics_on(old_engine, data, k, new_engine)}
    removed = sorted(old_ids - new_ids)
    summary = {"moved_share": float((items["neighbour_overlap"] < NEIGHBOUR_OVERLAP).mean()),
               "mean_neighbour_overlap": float(items["neighbour_overlap"].mean()),
               "median_displacement": float(items["displacement"].median()),
               "removed_share": len(removed) / max(len(old_ids), 1)}
    report = DriftReport(sorted(new_ids - old_ids), removed, len(shared), items, users, metrics, summary)
    report.warnings = _warnings(report, limits)
    return report


def aligned_vectors(new: Engine | str | Path, old: Engine | str | Path, item_ids: Sequence[object]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(old, new) unit vectors of `item_ids` in one space: the old version's rotated onto the new one by the
    Procrustes fit over every shared item (as `drift` measures displacement), both padded to the wider width.
    For a map of both versions at once (`recsys.plots.drift_map`)."""
    new, old = _engine(new), _engine(old)
    shared = np.array(sorted(set(new.items.ids) & set(old.items.ids)), dtype=object)
    rows = pd.Index(shared).get_indexer(pd.Index(list(item_ids), dtype=object))
    if (rows < 0).any():
        raise DataValidationError(f"Item(s) {[i for i, r in zip(item_ids, rows) if r < 0][:5]} are not in both "
                                  "versions.")
    a, b, rotation = _aligned(new, old, shared)
    return a[rows] @ rotation, b[rows]


def _aligned(new: Engine, old: Engine, shared: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `shared` items' unit vectors in each version, both padded to the wider width (zeros change no cosine),
    and the orthogonal R (Procrustes, over all of them) that rotates the old onto the new: (old, new, R)."""
    a = _unit(old.similarity_vectors[old.items.to_index(shared)])
    b = _unit(new.similarity_vectors[new.items.to_index(shared)])
    width = max(a.shape[1], b.shape[1])
    a, b = _pad(a, width), _pad(b, width)
    return a, b, _procrustes(a, b)


def _engine(bundle: Engine | str | Path) -> Engine:
    return bundle if isinstance(bundle, Engine) else load_engine(bundle)[0]


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)


def _item_table(new: Engine, old: Engine, shared: np.ndarray, k: int, max_items: int,
                rng: np.random.Generator) -> pd.DataFrame:
    at_new, at_old = new.items.to_index(shared), old.items.to_index(shared)
    a, b, rotation = _aligned(new, old, shared)
    queries = np.arange(len(shared))
    if len(queries) > max_items:
        queries = np.sort(rng.choice(queries, max_items, replace=False))
    overlap = np.array([len(set(x) & set(y)) / k for x, y in zip(_neighbours(b, queries, k),
                                                                   _neighbours(a, queries, k))])
    displacement = np.linalg.norm(a @ rotation - b, axis=1)[queries]
    norm_old = np.linalg.norm(old.item_vectors[at_old[queries]], axis=1)
    norm_new = np.linalg.norm(new.item_vectors[at_new[queries]], axis=1)
    titles = new.catalogue.titles_at(at_new[queries], (len(queries),))
    return pd.DataFrame({
        "item": shared[queries], "title": titles if titles is not None else [None] * len(queries),
        "neighbour_overlap": overlap, "displacement": displacement,
        "norm_ratio": norm_new / np.where(norm_old > 0, norm_old, np.nan),
        "popularity_old": old.catalogue.popularity[at_old[queries]],
        "popularity_new": new.catalogue.popularity[at_new[queries]]})


def _neighbours(unit: np.ndarray, queries: np.ndarray, k: int) -> list[np.ndarray]:
    """Each query row's k most cosine-similar other rows of `unit`, by blocks of queries."""
    out = []
    step = max(1, SCORE_BLOCK // len(unit))
    for start in range(0, len(queries), step):
        rows = queries[start:start + step]
        scores = unit[rows] @ unit.T
        scores[np.arange(len(rows)), rows] = -np.inf
        out.extend(np.argpartition(-scores, k, axis=1)[:, :k])
    return out


def _pad(x: np.ndarray, width: int) -> np.ndarray:
    return x if x.shape[1] == width else np.hstack([x, np.zeros((len(x), width - x.shape[1]), x.dtype)])


def _procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The orthogonal R minimising |a R - b| (rows paired, equal widths)."""
    u, _, vt = np.linalg.svd(a.astype(np.float64).T @ b.astype(np.float64))
    return (u @ vt).astype(np.float32)


def _user_overlap(new: Engine, old: Engine, k: int, max_users: int, rng: np.random.Generator) -> dict[str, float]:
    users = np.array(sorted(set(new.users.ids) & set(old.users.ids)), dtype=object)
    if len(users) > max_users:
        users = users[np.sort(rng.choice(len(users), max_users, replace=False))]
    if not len(users):
        return {"users": 0}
    lists_new, lists_old = new.recommend(users, k)[0], old.recommend(users, k)[0]
    jaccard, rbo, changed = [], [], []
    for x, y in zip(lists_new, lists_old):
        x, y = [i for i in x if i is not None], [i for i in y if i is not None]
        jaccard.append(len(set(x) & set(y)) / max(len(set(x) | set(y)), 1))
        rbo.append(rank_biased_overlap(x, y, RBO_P))
        changed.append(bool(x and y and x[0] != y[0]))
    return {"users": len(users), "jaccard": float(np.mean(jaccard)), "rbo": float(np.mean(rbo)),
            "top_item_changed_share": float(np.mean(changed))}


def rank_biased_overlap(x: list, y: list, p: float = RBO_P) -> float:
    """Rank-biased overlap of two ranked lists to the depth of the longer one (Webber et al. 2010), normalised
    so that two equal lists score 1: sum_d p^(d-1) |x[:d] & y[:d]| / d over sum_d p^(d-1)."""
    depth = max(len(x), len(y))
    if not depth:
        return 1.0
    weights = p ** np.arange(depth)
    agreement = [len(set(x[:d]) & set(y[:d])) / d for d in range(1, depth + 1)]
    return float(np.dot(weights, agreement) / weights.sum())


def _metrics_on(engine: Engine, data: pd.DataFrame, k: int, other: Engine) -> dict[str, float]:
    """NDCG@k and Recall@k of `engine` on `data`'s (user, item) pairs, over the users both engines know."""
    missing = [c for c in ("user", "item") if c not in data.columns]
    if missing:
        raise DataValidationError(f"drift's data needs columns 'user' and 'item'; missing {missing}. "
                                  f"Available: {list(data.columns)}.")
    relevant = data.astype({"user": str, "item": str}).groupby("user")["item"].agg(set)
    users = [u for u in relevant.index if u in engine.users and u in other.users]
    if not users:
        return {"users": 0}
    lists = engine.recommend(users, k)[0]
    ndcg, recall = [], []
    for user, top in zip(users, lists):
        hits = np.array([item in relevant[user] for item in top], dtype=float)
        ndcg.append(list_ndcg(hits, len(relevant[user])))
        recall.append(hits.sum() / min(len(relevant[user]), k))
    return {"users": len(users), f"ndcg@{k}": float(np.mean(ndcg)), f"recall@{k}": float(np.mean(recall))}


def _warnings(report: DriftReport, limits: Mapping[str, float]) -> list[str]:
    out = []
    s = report.summary
    if s["moved_share"] > limits["moved_share"]:
        out.append(f"{s['moved_share']:.0%} of the sampled items keep fewer than half of their neighbours "
                   f"(threshold moved_share={limits['moved_share']:g}).")
    if report.users.get("users") and report.users["jaccard"] < limits["user_jaccard"]:
        out.append(f"Users' top lists share {report.users['jaccard']:.2f} of their items on average (Jaccard; "
                   f"threshold user_jaccard={limits['user_jaccard']:g}).")
    if s["removed_share"] > limits["removed_share"]:
        out.append(f"{s['removed_share']:.0%} of the old catalogue is gone ({len(report.removed)} items; "
                   f"threshold removed_share={limits['removed_share']:g}).")
    if report.metrics and report.metrics["old"].get("users"):
        key = next(m for m in report.metrics["old"] if m.startswith("ndcg@"))
        old, new = report.metrics["old"][key], report.metrics["new"][key]
        if old > 0 and (old - new) / old > limits["ndcg_drop"]:
            out.append(f"{key} on the given data fell from {old:.4f} to {new:.4f} "
                       f"(threshold ndcg_drop={limits['ndcg_drop']:g}).")
    return out
