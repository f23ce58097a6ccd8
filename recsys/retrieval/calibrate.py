"""Index settings measured, not guessed: `tune_index` times each kind (k-means cells, norm-ranged Annoy
forests) on sampled real queries and keeps the fastest setting that reaches a recall target;
`build_indexes` keeps an index for a bundle only where it beats exact scanning.

Trade-offs: more `n_trees` gives better recall at a given `search_k` but a bigger index and a slower build;
a larger `search_k` (nodes inspected per candidate, as a multiple of n_trees) gives better recall and slower
queries. `tune_index` measures both on sampled real queries and keeps the fastest setting that reaches the target.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ..exceptions import DataValidationError
from .cells import CellIndex
from .exact import exact_topk, normalise
from .forest import AnnIndex
from .int8 import Int8Items

log = logging.getLogger("recsys")
N_TREES_GRID = (10, 25, 50, 100)  # tune_index: forests tried, smallest first
SEARCH_K_MULTIPLIERS = (1, 2, 4, 8, 12, 16, 32, 64)  # tune_index: search_k = n_trees * multiplier, per candidate
KINDS = ("cells", "annoy")  # tune_index: index kinds measured (cells first: they build in seconds)
CELLS_GRID = (1, 2, 4)  # tune_index: n_cells = sqrt(n) * factor, smallest first
N_PROBE_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # tune_index: cells probed per query
MIN_CELL_ITEMS = 16  # no cell layout with fewer items per cell on average (or fewer than 16 cells)
TIMING_REPEATS = 2  # tune_index times each setting this often and keeps the fastest (a busy machine's noise
#                     would otherwise stop a layout's search at a setting that only looked slower)


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
    kind: str = "annoy"     # 'annoy' (norm-ranged forests) or 'cells' (inverted lists, `CellIndex`)
    n_cells: int = 0        # cells only
    n_probe: int = 0        # cells probed per query (cells only)

    @property
    def speedup(self) -> float:
        return self.exact_ms / self.ann_ms if self.ann_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": round(self.speedup, 3)}


def load_index(directory: str | Path, prefix: str, **config: object) -> AnnIndex | CellIndex:
    """The index a bundle's manifest describes (`config()` of either kind; no 'kind' is an Annoy index)."""
    kind = config.pop("kind", "annoy")
    return CellIndex.load(directory, prefix, **config) if kind == "cells" else AnnIndex.load(directory, prefix,
                                                                                            **config)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / truth.size


def time_per_query(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n * 1000


def measure_exact(queries: np.ndarray, vectors: np.ndarray, k: int, batch: int = 256, int8: bool = True
                  ) -> tuple[float, float]:
    """(ms per query one at a time, ms per query in batches of `batch`). One query at a time is timed as the
    engine answers it: with int8 (the engine's item vectors, metric 'ip'), through the int8 first pass where
    `Int8Items.build` makes one for these vectors, else by float32 scoring; and with one BLAS thread, as the
    service runs it (one per request thread: recsys serve's gunicorn settings) and as an Annoy search runs: a
    multi-threaded product of one row costs more in thread hand-offs than it saves, and many times more on a
    busy machine, which would make an index look faster than it is."""
    codes = Int8Items.build(vectors) if int8 else None

    def one(q: np.ndarray) -> object:
        return (codes is not None and codes.topk(q, k)) or exact_topk(q[None, :], vectors, k)

    exact_topk(queries[:1], vectors, k)  # warm: the first product pages the vectors in
    with threadpool_limits(limits=1, user_api="blas"):
        single = time_per_query(lambda: [one(q) for q in queries], len(queries))
    reps = np.resize(queries, (max(batch, len(queries)), queries.shape[1]))
    batched = time_per_query(lambda: [exact_topk(reps[s:s + batch], vectors, k)
                                       for s in range(0, len(reps), batch)], len(reps))
    return single, batched


def tune_index(vectors: np.ndarray, queries: np.ndarray, *, metric: str = "ip", k: int = 10,
               target_recall: float = 0.95, n_trees_grid: tuple[int, ...] = N_TREES_GRID,
               search_k_multipliers: tuple[int, ...] = SEARCH_K_MULTIPLIERS, seed: int = 0,
               max_build_seconds: float = 600.0, slow_factor: float = 4.0, kinds: tuple[str, ...] = KINDS,
               cells_grid: tuple[int, ...] = CELLS_GRID, n_probe_grid: tuple[int, ...] = N_PROBE_GRID
               ) -> tuple[AnnIndex | CellIndex, IndexStats]:
    """Measure each of `kinds` on `queries` and keep the fastest setting that reaches the recall target.

    'cells': layouts of sqrt(n) * `cells_grid` cells, smallest first; at each, `n_probe` rises until the target
    is met. 'annoy': forests of growing `n_trees`; at each, `search_k` rises until the target is met. A kind
    stops growing once its next layout is no faster than the best setting found so far.

    queries: sampled real query vectors (user vectors for 'ip', item vectors for 'angular'). If no setting
    reaches the target, the most accurate one is returned (its recall is recorded honestly). A layout's search
    stops once a setting is `slow_factor` x slower than exact scanning without reaching the target: on such a
    small catalogue more effort only makes the index slower still, and exact search wins.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise DataValidationError(f"The 'kinds' parameter of tune_index must be a non-empty subset of {KINDS}. "
                                  f"Got {kinds!r}.")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if metric == "angular":
        vectors, queries = normalise(vectors), normalise(queries)
    k = min(k, len(vectors))
    truth = exact_topk(queries, vectors, k)
    exact_ms, exact_batch_ms = measure_exact(queries, vectors, k, int8=metric == "ip")
    tuning = _Tuning(vectors, queries, truth, k, target_recall, exact_ms, exact_batch_ms, metric, slow_factor)
    if "cells" in kinds:
        tuning.cells(cells_grid, n_probe_grid, seed)
    if "annoy" in kinds:
        tuning.annoy(n_trees_grid, search_k_multipliers, seed, max_build_seconds)
    stats, index = tuning.best if tuning.best is not None else tuning.fallback
    if stats.kind == "cells":
        index.n_probe = stats.n_probe
    else:
        index.search_k = stats.search_k
    return index, stats


@dataclass
class _Tuning:
    """tune_index's measurements so far: the fastest setting that met the target, and the most accurate."""

    vectors: np.ndarray
    queries: np.ndarray
    truth: np.ndarray
    k: int
    target_recall: float
    exact_ms: float
    exact_batch_ms: float
    metric: str
    slow_factor: float
    best: tuple[IndexStats, AnnIndex | CellIndex] | None = None
    fallback: tuple[IndexStats, AnnIndex | CellIndex] | None = None

    def measure(self, index: AnnIndex | CellIndex, build_seconds: float) -> str:
        """Time and score `index` at its current setting; 'met', 'slower' (than the best so far), 'too slow'
        (than `slow_factor` x exact) or 'short' (of the target)."""
        found = np.empty(0)

        def run() -> None:
            nonlocal found
            found = index.search(self.queries, self.vectors, self.k)

        ms = min(time_per_query(run, len(self.queries)) for _ in range(TIMING_REPEATS))
        recall = recall_at_k(found, self.truth)
        cells = isinstance(index, CellIndex)
        stats = IndexStats(self.metric, 0 if cells else index.n_trees, 0 if cells else index.search_k, self.k,
                           self.target_recall, round(recall, 4), round(ms, 4), round(self.exact_ms, 4),
                           round(self.exact_batch_ms, 4), 256, round(build_seconds, 2), len(self.queries),
                           index.n_ranges, "cells" if cells else "annoy", index.n_cells if cells else 0,
                           index.n_probe if cells else 0)
        log.info("%s %s %s: recall@%d=%.3f, %.3f ms/query (exact %.3f)", stats.kind, self.metric,
                 describe(stats.to_dict()), self.k, recall, ms, self.exact_ms)
        if self.fallback is None or recall > self.fallback[0].recall:
            self.fallback = (stats, index)
        if self.best is not None and ms >= self.best[0].ann_ms:
            return "slower"
        if recall >= self.target_recall:
            self.best = (stats, index)
            return "met"
        return "too slow" if ms > self.slow_factor * self.exact_ms else "short"

    def cells(self, cells_grid: tuple[int, ...], n_probe_grid: tuple[int, ...], seed: int) -> None:
        n = len(self.vectors)
        for factor in cells_grid:
            n_cells = round(math.sqrt(n) * factor)
            if n_cells < 16 or n < MIN_CELL_ITEMS * n_cells:
                break
            start = time.perf_counter()
            index = CellIndex(self.metric, n_cells, seed=seed).build(self.vectors)
            build_seconds = time.perf_counter() - start
            outcome = "short"
            for n_probe in n_probe_grid:
                index.n_probe = n_probe
                outcome = self.measure(index, build_seconds)
                if outcome != "short" or n_probe >= n_cells:
                    break
            if self.best is not None and outcome != "met":
                break  # more cells no longer buy a faster setting

    def annoy(self, n_trees_grid: tuple[int, ...], multipliers: tuple[int, ...], seed: int,
              max_build_seconds: float) -> None:
        spent = 0.0
        for n_trees in n_trees_grid:
            start = time.perf_counter()
            index = AnnIndex(self.metric, n_trees, seed=seed).build(self.vectors)
            build_seconds = time.perf_counter() - start
            spent += build_seconds
            outcome = "short"
            for mult in multipliers:
                index.search_k = n_trees * mult
                outcome = self.measure(index, build_seconds)
                if outcome != "short":
                    break
            if outcome == "too slow" or (self.best is not None and outcome != "met") or spent > max_build_seconds:
                break  # more trees no longer buy a faster setting (or the build budget is spent)


def describe(stats: dict) -> str:
    """An index setting in words, from its stats (`IndexStats.to_dict`, as in a bundle manifest; no 'kind' is
    an Annoy index): 'n_cells=1000 n_probe=8' or 'n_trees=50 search_k=400 ranges=7'."""
    if stats.get("kind", "annoy") == "cells":
        return f"n_cells={stats['n_cells']} n_probe={stats['n_probe']}"
    return f"n_trees={stats['n_trees']} search_k={stats['search_k']} ranges={stats['n_ranges']}"


INDEX_PREFIX = {"ip": "index_ip", "angular": "index_angular"}


def build_indexes(item_vectors: np.ndarray, user_vectors: np.ndarray, similarity_vectors: np.ndarray | None,
                  *, k: int = 10, target_recall: float = 0.95, n_queries: int = 200, seed: int = 0
                  ) -> tuple[dict[str, AnnIndex | CellIndex], dict[str, dict]]:
    """Tune an 'ip' index (user -> item) on sampled user vectors and, when `similarity_vectors` is given,
    an 'angular' index (item -> item) on sampled items. Returns the indexes worth keeping (recall target met
    and faster than exact single-query scoring) and the measurements of all (`kept` says which)."""
    rng = np.random.default_rng(seed)
    indexes: dict[str, AnnIndex | CellIndex] = {}
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
        log.info("%s index (%s): %s recall@%d=%.3f, %.3f ms/query vs exact %.3f ms (%.1fx)%s", metric,
                 measured.kind, describe(stats[metric]), k, measured.recall, measured.ann_ms, measured.exact_ms,
                 measured.speedup, "" if useful else ", not kept")
    return indexes, stats
