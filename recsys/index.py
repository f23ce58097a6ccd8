"""Approximate nearest-neighbour retrieval with Annoy, tuned at build time to a recall target.

Two metrics:
* 'ip' (maximum inner product, user -> item). annoy 1.17.3's own 'dot' metric has badly broken recall, so
  items are augmented to a common norm M, x' = [x, sqrt(M^2 - |x|^2)], and queries to q' = [q, 0]; then
  cos(q', x') = q.x / (|q| M), so angular order equals inner-product order (Bachrach et al. 2014). With one
  M for the whole catalogue, popularity-like norms push almost every item onto the extra axis and the trees
  split by norm, not direction (measured: recall 0.54 at 1M items). So the catalogue is cut into norm
  ranges (top-heavy quantiles of the norm ranking), each augmented to its own maximum M_b, with a forest
  per range (Norm-Ranging LSH, Yan et al. 2018). A query visits ranges from the largest norms down and
  stops once |q| * M_b cannot beat its k-th best score: that cut never loses a true top-k item. The first,
  small ranges of the largest norms (up to EXACT_PREFIX items, at most 1/8 of the catalogue) are scored
  exactly with one matrix-vector product, cheaper there than tree walks, and they seed the early stop.
* 'angular' (cosine, item -> item): one range of unit vectors.

Candidates are always re-scored exactly, so returned scores are true inner products.

Trade-offs: more `n_trees` gives better recall at a given `search_k` but a bigger index and a slower build;
a larger `search_k` (nodes inspected per candidate, as a multiple of n_trees) gives better recall and slower
queries. `tune_index` measures both on sampled real queries and keeps the fastest setting that reaches the target.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from safetensors.numpy import load_file, save_file
from threadpoolctl import threadpool_limits

from .exceptions import DataValidationError

log = logging.getLogger("recsys")
METRICS = ("ip", "angular")
NORM_QUANTILES = (0.002, 0.01, 0.03, 0.08, 0.2, 0.5, 1.0)  # top-heavy: big norms matter most for top-k
MIN_RANGE = 1000
EXACT_PREFIX = 32_768  # leading (largest-norm) ranges up to this many items are scored exactly
EXACT_BLOCK = 1 << 25  # floats of scores per exact-scoring block (128 MiB)
N_TREES_GRID = (10, 25, 50, 100)  # tune_index: forests tried, smallest first
SEARCH_K_MULTIPLIERS = (1, 2, 4, 8, 12, 16, 32, 64)  # tune_index: search_k = n_trees * multiplier, per candidate


@dataclass
class IndexStats:
    """What tuning measured; stored in the bundle manifest."""

    metric: str
    n_trees: int
    search_k: int           # nodes inspected per candidate, per range
    k: int
    target_recall: float
    recall: float
    ann_ms: float           # mean per-query latency of the index (query + exact re-score)
    exact_ms: float         # mean per-query latency of exact scoring, one query at a time
    exact_batch_ms: float   # mean per-query latency of exact scoring in batches of `batch`
    batch: int
    build_seconds: float
    n_queries: int
    n_ranges: int

    @property
    def speedup(self) -> float:
        return self.exact_ms / self.ann_ms if self.ann_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": round(self.speedup, 3)}


def norm_ranges(norms: np.ndarray, quantiles: tuple[float, ...] = NORM_QUANTILES, min_size: int = MIN_RANGE
                ) -> np.ndarray:
    """Boundaries (into the items sorted by norm, descending) of the norm ranges: [0, b1, ..., n]."""
    n = len(norms)
    bounds = [0]
    for q in quantiles:
        stop = max(round(q * n), 1)
        if stop - bounds[-1] >= min_size or stop == n:
            bounds.append(min(stop, n))
    if bounds[-1] != n:
        bounds.append(n)
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_size:  # fold a small tail into its neighbour
        bounds.pop(-2)
    return np.asarray(sorted(set(bounds)), dtype=np.int64)


class AnnIndex:
    """Annoy forests over item vectors, one per norm range ('ip') or one in all ('angular')."""

    def __init__(self, metric: str = "ip", n_trees: int = 50, search_k: int = -1, fetch: int = 1, seed: int = 0,
                 quantiles: tuple[float, ...] = NORM_QUANTILES):
        if metric not in METRICS:
            raise DataValidationError(f"The 'metric' parameter of AnnIndex must be one of {METRICS}. Got {metric!r}.")
        self.metric = metric
        self.n_trees = n_trees
        self.search_k = search_k  # nodes inspected per candidate (-1: annoy's default, n_trees)
        self.fetch = fetch  # candidates per result wanted (the engine raises it when filters reject many)
        self.seed = seed
        self.quantiles = quantiles  # norm-range cut points ('ip'); (1.0,) gives one range
        self.dim: int | None = None
        self.order = np.empty(0, np.int64)   # item indices sorted by norm, descending
        self.bounds = np.zeros(1, np.int64)  # range b holds order[bounds[b]:bounds[b+1]]
        self.max_norms = np.empty(0, np.float32)
        self._forests: list[AnnoyIndex | None] = []  # None: a range scored exactly from `prefix`
        self.forest_searches = 0  # forests searched so far (ranges the norm bound did not cut); for benchmarks
        self.prefix = np.empty((0, 0), np.float32)

    @property
    def n_ranges(self) -> int:
        return len(self._forests)

    @property
    def exact_ranges(self) -> int:
        return sum(f is None for f in self._forests)

    def build(self, vectors: np.ndarray, n_jobs: int = -1) -> AnnIndex:
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1)
        if self.metric == "ip":
            self.order = np.argsort(-norms, kind="stable")
            self.bounds = norm_ranges(norms, self.quantiles)
        else:
            self.order = np.arange(len(vectors))
            self.bounds = np.array([0, len(vectors)], np.int64)
        self.dim = vectors.shape[1] + (self.metric == "ip")
        limit = min(EXACT_PREFIX, len(vectors) // 8) if self.metric == "ip" else 0
        self._forests, max_norms = [], []
        for start, stop in zip(self.bounds[:-1], self.bounds[1:]):
            part = vectors[self.order[start:stop]]
            part_norms = norms[self.order[start:stop]]
            top = float(part_norms.max()) if len(part) else 0.0
            max_norms.append(top)
            if stop <= limit and all(f is None for f in self._forests):
                self._forests.append(None)  # scored exactly (see module docstring)
                continue
            if self.metric == "ip":
                part = np.hstack([part, np.sqrt(np.maximum(top ** 2 - part_norms ** 2, 0))[:, None]])
            forest = AnnoyIndex(self.dim, "angular")
            forest.set_seed(self.seed)
            for i, v in enumerate(part):
                forest.add_item(i, v)
            forest.build(self.n_trees, n_jobs=n_jobs)
            self._forests.append(forest)
        self.max_norms = np.asarray(max_norms, np.float32)
        self.prefix = vectors[self.order[:self.bounds[self.exact_ranges]]].copy()
        return self

    def search_one(self, q: np.ndarray, k: int, vectors: np.ndarray, n_fetch: int | None = None,
                   keep: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (item indices, exact scores), best first, for one query; `keep(candidates) -> bool mask`
        drops filtered items before scoring. Each visited range returns `n_fetch` (default k * fetch)."""
        if not self._forests:
            raise DataValidationError("AnnIndex is not built or loaded.")
        n_fetch = n_fetch or k * self.fetch
        search_k = -1 if self.search_k < 0 else self.search_k * n_fetch
        query = np.append(q, 0.0) if self.metric == "ip" else q
        q_norm = float(np.linalg.norm(q))
        best_idx, best_scores = np.empty(0, np.int64), np.empty(0, np.float32)
        if len(self.prefix):  # the largest-norm items, scored exactly
            cand = self.order[:len(self.prefix)]
            scores = self.prefix @ q
            if keep is not None:
                mask = keep(cand)
                cand, scores = cand[mask], scores[mask]
            top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            best_idx, best_scores = cand[top], scores[top].astype(np.float32)
        for b, forest in enumerate(self._forests):
            if forest is None:
                continue
            if len(best_scores) >= k and best_scores[k - 1] >= q_norm * self.max_norms[b]:
                break  # no item in this or any later (smaller-norm) range can enter the top k
            self.forest_searches += 1
            local = np.asarray(forest.get_nns_by_vector(query, n_fetch, search_k=search_k), dtype=np.int64)
            cand = self.order[self.bounds[b] + local]
            if keep is not None and len(cand):
                cand = cand[keep(cand)]
            if not len(cand):
                continue
            idx = np.concatenate([best_idx, cand])
            scores = np.concatenate([best_scores, vectors[cand] @ q])
            top = np.argsort(-scores, kind="stable")[:k]
            best_idx, best_scores = idx[top], scores[top].astype(np.float32)
        return best_idx, best_scores

    def search(self, queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
        """Top-k item indices per query (-1 padded)."""
        out = np.full((len(queries), k), -1, np.int64)
        for r, q in enumerate(queries):
            idx, _ = self.search_one(q, k, vectors)
            out[r, :len(idx)] = idx
        return out

    # ------------------------------------------------------------------------------------ persistence
    def file_writers(self, prefix: str) -> dict[str, Callable[[Path], None]]:
        """{file name: writer} for a bundle: one .ann per range plus the range layout (safetensors)."""
        writers: dict[str, Callable[[Path], None]] = {
            f"{prefix}.{b}.ann": (lambda path, f=forest: f.save(str(path)))
            for b, forest in enumerate(self._forests) if forest is not None}
        writers[f"{prefix}.ranges.safetensors"] = lambda path: save_file(
            {"order": self.order.astype(np.int64), "bounds": self.bounds.astype(np.int64),
             "max_norms": self.max_norms.astype(np.float32), "prefix": np.ascontiguousarray(self.prefix)},
            str(path))
        return writers

    @classmethod
    def load(cls, directory: str | Path, prefix: str, *, dim: int, metric: str, n_trees: int, search_k: int,
             fetch: int = 1, n_ranges: int = 1, exact_ranges: int = 0) -> AnnIndex:
        """Memory-maps the forests: processes that load the same index share its pages."""
        directory = Path(directory)
        index = cls(metric, n_trees, search_k, fetch)
        index.dim = dim
        layout = load_file(str(directory / f"{prefix}.ranges.safetensors"))
        index.order, index.bounds, index.max_norms = layout["order"], layout["bounds"], layout["max_norms"]
        index.prefix = layout["prefix"]
        index._forests = [None] * exact_ranges
        for b in range(exact_ranges, n_ranges):
            forest = AnnoyIndex(dim, "angular")
            forest.load(str(directory / f"{prefix}.{b}.ann"))  # mmap, no prefault
            index._forests.append(forest)
        return index

    def config(self) -> dict:
        return {"metric": self.metric, "n_trees": self.n_trees, "search_k": self.search_k, "fetch": self.fetch,
                "dim": self.dim, "n_ranges": self.n_ranges, "exact_ranges": self.exact_ranges}


# ------------------------------------------------------------------------------------------ measurement
def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k by inner product, in blocks of queries that bound the score matrix's memory."""
    k = min(k, len(vectors))
    out = np.empty((len(queries), k), np.int64)
    step = max(1, EXACT_BLOCK // max(len(vectors), 1))
    for s in range(0, len(queries), step):
        scores = queries[s:s + step] @ vectors.T
        part = np.argpartition(scores, len(vectors) - k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[s:s + step] = np.take_along_axis(part, order, axis=1)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / truth.size


def _time_per_query(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n * 1000


def measure_exact(queries: np.ndarray, vectors: np.ndarray, k: int, batch: int = 256) -> tuple[float, float]:
    """(ms per query one at a time, ms per query in batches of `batch`). One query at a time is timed with one
    BLAS thread, as the service runs it (one per request thread: recsys serve's gunicorn settings) and as an
    Annoy search runs: a multi-threaded product of one row costs more in thread hand-offs than it saves, and
    many times more on a busy machine, which would make an index look faster than it is."""
    exact_topk(queries[:1], vectors, k)  # warm: the first product pages the vectors in
    with threadpool_limits(limits=1, user_api="blas"):
        single = _time_per_query(lambda: [exact_topk(q[None, :], vectors, k) for q in queries], len(queries))
    reps = np.resize(queries, (max(batch, len(queries)), queries.shape[1]))
    batched = _time_per_query(lambda: [exact_topk(reps[s:s + batch], vectors, k)
                                       for s in range(0, len(reps), batch)], len(reps))
    return single, batched


def tune_index(vectors: np.ndarray, queries: np.ndarray, *, metric: str = "ip", k: int = 10,
               target_recall: float = 0.95, n_trees_grid: tuple[int, ...] = N_TREES_GRID,
               search_k_multipliers: tuple[int, ...] = SEARCH_K_MULTIPLIERS, seed: int = 0,
               max_build_seconds: float = 600.0, slow_factor: float = 4.0) -> tuple[AnnIndex, IndexStats]:
    """Build indexes with growing `n_trees`; at each, raise `search_k` until the recall target is met;
    keep the fastest setting found.

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
    best: tuple[IndexStats, AnnIndex] | None = None
    fallback: tuple[IndexStats, AnnIndex] | None = None
    spent, too_slow = 0.0, False
    for n_trees in n_trees_grid:
        start = time.perf_counter()
        index = AnnIndex(metric, n_trees, seed=seed).build(vectors)
        build_seconds = time.perf_counter() - start
        spent += build_seconds
        improved = False
        for mult in search_k_multipliers:
            index.search_k = n_trees * mult
            found = np.empty(0)

            def run(index: AnnIndex = index) -> None:
                nonlocal found
                found = index.search(queries, vectors, k)

            ms = _time_per_query(run, len(queries))
            recall = recall_at_k(found, truth)
            stats = IndexStats(metric, n_trees, index.search_k, k, target_recall, round(recall, 4), round(ms, 4),
                               round(exact_ms, 4), round(exact_batch_ms, 4), 256, round(build_seconds, 2),
                               len(queries), index.n_ranges)
            log.info("annoy %s n_trees=%d search_k=%d/candidate (%d ranges): recall@%d=%.3f, %.3f ms/query "
                     "(exact %.3f)", metric, n_trees, index.search_k, index.n_ranges, k, recall, ms, exact_ms)
            if fallback is None or recall > fallback[0].recall:
                fallback = (stats, index)
            if best is not None and ms >= best[0].ann_ms:
                break  # already slower than the best setting found with fewer trees
            if recall >= target_recall:
                best, improved = (stats, index), True
                break
            if ms > slow_factor * exact_ms:
                too_slow = True
                break
        if too_slow or (best is not None and not improved) or spent > max_build_seconds:
            break  # more trees no longer buy a faster setting (or the build budget is spent)
    stats, index = best if best is not None else fallback
    index.search_k = stats.search_k
    return index, stats


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)


# ---------------------------------------------------------------------------------------- for bundles
INDEX_PREFIX = {"ip": "index_ip", "angular": "index_angular"}


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
        index, measured = tune_index(vectors, sample, metric=metric, k=k, target_recall=target_recall, seed=seed)
        stats[metric] = measured.to_dict()
        useful = measured.recall >= target_recall and measured.speedup > 1
        stats[metric]["kept"] = useful
        if useful:  # an index slower than exact scanning would only cost disk and page cache
            indexes[metric] = index
        log.info("%s index: n_trees=%d search_k=%d recall@%d=%.3f, %.3f ms/query vs exact %.3f ms (%.1fx)%s",
                 metric, index.n_trees, index.search_k, k, measured.recall, measured.ann_ms, measured.exact_ms,
                 measured.speedup, "" if useful else ", not kept")
    return indexes, stats
