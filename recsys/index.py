"""Approximate nearest-neighbour retrieval with Annoy, tuned at build time to a recall target.

Two metrics:
* 'ip' (maximum inner product, user -> item): annoy 1.17.3's own 'dot' metric has badly broken recall, so
  items are augmented to a common norm M, x' = [x, sqrt(M^2 - |x|^2)], and queries to q' = [q, 0]. Then
  cos(q', x') = q.x / (|q| M): the angular ranking of x' equals the inner-product ranking of x
  (Bachrach et al. 2014). Candidates are re-scored exactly, so returned scores are true inner products.
* 'angular' (cosine, item -> item).

Trade-offs: more `n_trees` gives better recall at a given `search_k` but a bigger index and slower build;
a larger `search_k` inspects more nodes per query (better recall, slower queries); fetching more candidates
than k (`fetch`) and re-scoring them exactly recovers items the angular approximation ranks a little low.
`tune` measures these on sampled real queries and keeps the fastest setting that reaches the recall target.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from .exceptions import DataValidationError

log = logging.getLogger("recsys")
METRICS = ("ip", "angular")


@dataclass
class IndexStats:
    """What tuning measured; stored in the bundle manifest."""

    metric: str
    n_trees: int
    search_k: int
    fetch: int              # candidates fetched per query, as a multiple of k
    k: int
    target_recall: float
    recall: float
    ann_ms: float           # mean per-query latency of the index (query + exact re-score)
    exact_ms: float         # mean per-query latency of exact scoring, one query at a time
    exact_batch_ms: float   # mean per-query latency of exact scoring in batches of `batch`
    batch: int
    build_seconds: float
    n_queries: int

    @property
    def speedup(self) -> float:
        return self.exact_ms / self.ann_ms if self.ann_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": round(self.speedup, 3)}


class AnnIndex:
    """An Annoy forest over item vectors. Query results are candidate item indices, best first."""

    def __init__(self, metric: str = "ip", n_trees: int = 50, search_k: int = -1, fetch: int = 1, seed: int = 0):
        if metric not in METRICS:
            raise DataValidationError(f"The 'metric' parameter of AnnIndex must be one of {METRICS}. Got {metric!r}.")
        self.metric = metric
        self.n_trees = n_trees
        self.search_k = search_k  # nodes inspected per candidate returned (-1: annoy's default, n_trees)
        self.fetch = fetch  # candidates to fetch per result wanted, re-scored exactly
        self.seed = seed
        self._annoy: AnnoyIndex | None = None
        self.dim: int | None = None

    def build(self, vectors: np.ndarray, n_jobs: int = -1) -> AnnIndex:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.metric == "ip":
            norms = np.linalg.norm(vectors, axis=1)
            extra = np.sqrt(np.maximum(norms.max() ** 2 - norms ** 2, 0))
            vectors = np.hstack([vectors, extra[:, None]])
        self.dim = vectors.shape[1]
        index = AnnoyIndex(self.dim, "angular")
        index.set_seed(self.seed)
        for i, v in enumerate(vectors):
            index.add_item(i, v)
        index.build(self.n_trees, n_jobs=n_jobs)
        self._annoy = index
        return self

    def _query_vector(self, q: np.ndarray) -> np.ndarray:
        return np.append(q, 0.0) if self.metric == "ip" else q

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        """Up to n item indices for one query vector, in the index's own (approximate) order."""
        if self._annoy is None:
            raise DataValidationError("AnnIndex is not built or loaded.")
        search_k = -1 if self.search_k < 0 else self.search_k * n
        return np.asarray(self._annoy.get_nns_by_vector(self._query_vector(query), n, search_k=search_k),
                          dtype=np.int64)

    def search(self, queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
        """Top-k per query: fetch k * fetch candidates, re-score them exactly against `vectors`, keep k."""
        out = np.full((len(queries), k), -1, np.int64)
        for r, q in enumerate(queries):
            cand = self.candidates(q, k * self.fetch)
            best = cand[np.argsort(-(vectors[cand] @ q), kind="stable")[:k]]
            out[r, :len(best)] = best
        return out

    def save(self, path: str | Path) -> None:
        self._annoy.save(str(path))

    @classmethod
    def load(cls, path: str | Path, dim: int, metric: str, n_trees: int, search_k: int, fetch: int = 1
             ) -> AnnIndex:
        """Memory-maps the file: processes that load the same index share its pages."""
        index = cls(metric, n_trees, search_k, fetch)
        index.dim = dim
        index._annoy = AnnoyIndex(dim, "angular")
        index._annoy.load(str(path))  # mmap, no prefault
        return index

    def config(self) -> dict:
        return {"metric": self.metric, "n_trees": self.n_trees, "search_k": self.search_k, "fetch": self.fetch,
                "dim": self.dim}


# ------------------------------------------------------------------------------------------ measurement
def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    part = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / truth.size


def _time_per_query(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n * 1000


def measure_exact(queries: np.ndarray, vectors: np.ndarray, k: int, batch: int = 256) -> tuple[float, float]:
    """(ms per query one at a time, ms per query in batches of `batch`)."""
    single = _time_per_query(lambda: [exact_topk(q[None, :], vectors, k) for q in queries], len(queries))
    reps = np.resize(queries, (max(batch, len(queries)), queries.shape[1]))
    batched = _time_per_query(lambda: [exact_topk(reps[s:s + batch], vectors, k)
                                       for s in range(0, len(reps), batch)], len(reps))
    return single, batched


def tune(vectors: np.ndarray, queries: np.ndarray, *, metric: str = "ip", k: int = 10,
         target_recall: float = 0.95, n_trees_grid: tuple[int, ...] = (10, 25, 50, 100),
         efforts: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (2, 4), (4, 2), (8, 2), (16, 2), (32, 4)),
         seed: int = 0, max_build_seconds: float = 600.0, slow_factor: float = 4.0
         ) -> tuple[AnnIndex, IndexStats]:
    """Build indexes with growing `n_trees`; at each, raise the effort (fetch multiple, search_k per
    candidate as a multiple of n_trees) until the recall target is met; keep the fastest setting found.

    queries: sampled real query vectors (user vectors for 'ip', item vectors for 'angular'). If no setting
    reaches the target, the most accurate one is returned (its recall is recorded honestly). Tuning stops
    early once a setting is `slow_factor` x slower than exact scanning without reaching the target: on such a
    small catalogue more effort or more trees only make the index slower still, and exact search wins.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if metric == "angular":
        vectors, queries = _unit(vectors), _unit(queries)
    k = min(k, len(vectors))
    truth = exact_topk(queries, vectors, k)
    exact_ms, exact_batch_ms = measure_exact(queries, vectors, k)
    best: IndexStats | None = None
    best_index: AnnIndex | None = None
    fallback: tuple[IndexStats, AnnIndex] | None = None
    spent = 0.0
    too_slow = False
    for n_trees in n_trees_grid:
        start = time.perf_counter()
        index = AnnIndex(metric, n_trees, seed=seed).build(vectors)
        build_seconds = time.perf_counter() - start
        spent += build_seconds
        improved = False
        for fetch, sk_mult in efforts:
            index.fetch, index.search_k = fetch, n_trees * sk_mult
            found = None

            def run(index: AnnIndex = index) -> None:
                nonlocal found
                found = index.search(queries, vectors, k)

            ms = _time_per_query(run, len(queries))
            recall = recall_at_k(found, truth)
            stats = IndexStats(metric, n_trees, index.search_k, fetch, k, target_recall, round(recall, 4),
                               round(ms, 4), round(exact_ms, 4), round(exact_batch_ms, 4), 256,
                               round(build_seconds, 2), len(queries))
            log.info("annoy %s n_trees=%d fetch=%dk search_k=%d/candidate: recall@%d=%.3f, %.3f ms/query "
                     "(exact %.3f)", metric, n_trees, fetch, index.search_k, k, recall, ms, exact_ms)
            if fallback is None or recall > fallback[0].recall:
                fallback = (stats, index)
            if best is not None and ms >= best.ann_ms:
                break  # already slower than the best setting found with fewer trees
            if recall >= target_recall:
                best, best_index, improved = stats, index, True
                break
            if ms > slow_factor * exact_ms:
                too_slow = True
                break
        if too_slow or (best is not None and not improved) or spent > max_build_seconds:
            break  # more trees no longer buy a faster setting (or the build budget is spent)
    stats, index = (best, best_index) if best is not None else fallback
    index.fetch, index.search_k = stats.fetch, stats.search_k
    return index, stats


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)


# ---------------------------------------------------------------------------------------- for bundles
INDEX_FILES = {"ip": "index_ip.ann", "angular": "index_angular.ann"}


def build_indexes(item_vectors: np.ndarray, user_vectors: np.ndarray, similarity_vectors: np.ndarray | None,
                  *, k: int = 10, target_recall: float = 0.95, n_queries: int = 200, seed: int = 0
                  ) -> tuple[dict[str, AnnIndex], dict[str, dict]]:
    """Tune an 'ip' index (user -> item) on sampled user vectors and, when `similarity_vectors` is given,
    an 'angular' index (item -> item) on sampled items. Returns the indexes worth keeping (recall target met
    and faster than exact single-query scoring) and the measurements of all (`kept` says which)."""
    rng = np.random.default_rng(seed)
    indexes: dict[str, AnnIndex] = {}
    stats: dict[str, dict] = {}
    jobs = [("ip", item_vectors, user_vectors)]
    if similarity_vectors is not None:
        jobs.append(("angular", similarity_vectors, similarity_vectors))
    for metric, vectors, query_pool in jobs:
        sample = query_pool[rng.choice(len(query_pool), min(n_queries, len(query_pool)), replace=False)]
        index, measured = tune(vectors, sample, metric=metric, k=k, target_recall=target_recall, seed=seed)
        stats[metric] = measured.to_dict()
        useful = measured.recall >= target_recall and measured.speedup > 1
        stats[metric]["kept"] = useful
        if useful:  # an index slower than exact scanning would only cost disk and page cache
            indexes[metric] = index
        log.info("%s index: n_trees=%d search_k=%d recall@%d=%.3f, %.3f ms/query vs exact %.3f ms (%.1fx)",
                 metric, index.n_trees, index.search_k, k, measured.recall, measured.ann_ms, measured.exact_ms,
                 measured.speedup)
    return indexes, stats
