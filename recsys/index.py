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

Beside the forests, `CellIndex` is inverted lists over k-means cells (IVF): items are stored grouped by their
nearest of `n_cells` centroids, a query ranks the centroids by inner product and scores exactly every item of
the best `n_probe` cells (contiguous blocks: one matrix-vector product each). Where norms barely vary (MF's
vectors) the norm ranges cannot cut anything and the forests walk many nodes; the cells then pay more.
`tune_index` measures both kinds on the same queries and keeps the faster that reaches the target.

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
from annoy import AnnoyIndex
from safetensors.numpy import load_file, save_file
from threadpoolctl import threadpool_limits

from .exceptions import DataValidationError
from .quantized import Int8Items

log = logging.getLogger("recsys")
METRICS = ("ip", "angular")
NORM_QUANTILES = (0.002, 0.01, 0.03, 0.08, 0.2, 0.5, 1.0)  # top-heavy: big norms matter most for top-k
MIN_RANGE = 1000
EXACT_PREFIX = 32_768  # leading (largest-norm) ranges up to this many items are scored exactly
EXACT_BLOCK = 1 << 25  # floats of scores per exact-scoring block (128 MiB)
N_TREES_GRID = (10, 25, 50, 100)  # tune_index: forests tried, smallest first
SEARCH_K_MULTIPLIERS = (1, 2, 4, 8, 12, 16, 32, 64)  # tune_index: search_k = n_trees * multiplier, per candidate
KINDS = ("cells", "annoy")  # tune_index: index kinds measured (cells first: they build in seconds)
CELLS_GRID = (1, 2, 4)  # tune_index: n_cells = sqrt(n) * factor, smallest first
N_PROBE_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # tune_index: cells probed per query
MIN_CELL_ITEMS = 16  # no cell layout with fewer items per cell on average (or fewer than 16 cells)
KMEANS_SAMPLE = 32  # k-means trains on this many sampled items per cell
KMEANS_ITERS = 10
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


def _best_k(idx: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (at most) k best of candidates `idx` with `scores`, best first (ties: candidate order)."""
    top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return idx[top], scores[top].astype(np.float32)


class _Searchable:
    """`search` for both index kinds, from their `search_one`."""

    def search(self, queries: np.ndarray, vectors: np.ndarray | None, k: int) -> np.ndarray:
        """Top-k item indices per query (-1 padded)."""
        out = np.full((len(queries), k), -1, np.int64)
        for r, q in enumerate(queries):
            idx, _ = self.search_one(q, k, vectors)
            out[r, :len(idx)] = idx
        return out


class AnnIndex(_Searchable):
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
            best_idx, best_scores = _best_k(cand, scores, k)
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


class CellIndex(_Searchable):
    """Inverted lists over k-means cells (see the module docstring): `n_cells` centroids (None: sqrt(n)),
    `n_probe` cells scored exactly per query. Same search interface as `AnnIndex`."""

    kind = "cells"
    n_ranges = 1  # (the engine sizes its over-fetching by this)
    fetch = 1

    def __init__(self, metric: str = "ip", n_cells: int | None = None, n_probe: int = 8, seed: int = 0):
        if metric not in METRICS:
            raise DataValidationError(f"The 'metric' parameter of CellIndex must be one of {METRICS}. Got {metric!r}.")
        self.metric = metric
        self.n_cells = n_cells
        self.n_probe = n_probe
        self.seed = seed
        self.centroids = np.empty((0, 0), np.float32)
        self.order = np.empty(0, np.int64)   # item indices grouped by cell
        self.bounds = np.zeros(1, np.int64)  # cell c holds order[bounds[c]:bounds[c+1]]
        self.grouped = np.empty((0, 0), np.float32)  # the item vectors in `order`
        self.cells_probed = 0  # for benchmarks

    @property
    def dim(self) -> int:
        return int(self.grouped.shape[1])

    def build(self, vectors: np.ndarray) -> CellIndex:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(vectors)
        n_cells = int(min(self.n_cells or round(np.sqrt(n)), n))
        centroids = kmeans(vectors, max(n_cells, 1), seed=self.seed)
        cell = nearest_centroid(vectors, centroids)
        self.order = np.argsort(cell, kind="stable")
        counts = np.bincount(cell, minlength=len(centroids))
        self.bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.grouped = vectors[self.order]
        means, filled = _cell_means(self.grouped, self.bounds)
        centroids[filled] = means[filled]  # probe by the mean of what each cell holds
        self.centroids, self.n_cells = centroids.astype(np.float32), len(centroids)
        return self

    def search_one(self, q: np.ndarray, k: int, vectors: np.ndarray | None = None, n_fetch: int | None = None,
                   keep: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (item indices, exact scores), best first: the items of the `n_probe` best cells, and of more
        cells while fewer than `n_fetch` (default k) of them pass `keep`. `vectors` is unused (the index holds
        its own grouped copy)."""
        if not len(self.centroids):
            raise DataValidationError("CellIndex is not built or loaded.")
        want = max(n_fetch or k, k)
        ranked = self.centroids @ q
        n_probe = min(self.n_probe, len(ranked))
        first = np.argpartition(-ranked, n_probe - 1)[:n_probe] if n_probe < len(ranked) else np.arange(len(ranked))
        cells = first[np.argsort(-ranked[first])]
        idx_parts, score_parts, n_kept, done = [], [], 0, 0
        while True:
            for c in cells[done:]:
                start, stop = self.bounds[c], self.bounds[c + 1]
                if start == stop:
                    continue
                cand, scores = self.order[start:stop], self.grouped[start:stop] @ q
                if keep is not None:
                    mask = keep(cand)
                    cand, scores = cand[mask], scores[mask]
                idx_parts.append(cand)
                score_parts.append(scores)
                n_kept += len(cand)
            self.cells_probed += len(cells) - done
            done = len(cells)
            if n_kept >= want or done == len(ranked):
                break
            # too few passed the filter: the next cells in centroid order, doubling the cells probed
            rest = np.argsort(-ranked, kind="stable")
            rest = rest[~np.isin(rest, cells)]
            cells = np.concatenate([cells, rest[:done]])
        if not idx_parts:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        return _best_k(np.concatenate(idx_parts), np.concatenate(score_parts), k)

    def file_writers(self, prefix: str) -> dict[str, Callable[[Path], None]]:
        """{file name: writer} for a bundle: one safetensors file (centroids, layout, grouped vectors)."""
        return {f"{prefix}.cells.safetensors": lambda path: save_file(
            {"centroids": self.centroids, "order": self.order.astype(np.int64),
             "bounds": self.bounds.astype(np.int64), "grouped": np.ascontiguousarray(self.grouped)}, str(path))}

    @classmethod
    def load(cls, directory: str | Path, prefix: str, *, metric: str, n_cells: int, n_probe: int, **_: object
             ) -> CellIndex:
        """Memory-maps the grouped vectors (processes that load the same index share their pages)."""
        index = cls(metric, n_cells, n_probe)
        arrays = mmap_safetensors(Path(directory) / f"{prefix}.cells.safetensors")
        index.centroids, index.order, index.bounds = (np.asarray(arrays[n]) for n in ("centroids", "order", "bounds"))
        index.grouped = arrays["grouped"]
        return index

    def config(self) -> dict:
        return {"kind": self.kind, "metric": self.metric, "n_cells": self.n_cells, "n_probe": self.n_probe,
                "dim": self.dim}


def load_index(directory: str | Path, prefix: str, **config: object) -> AnnIndex | CellIndex:
    """The index a bundle's manifest describes (`config()` of either kind; no 'kind' is an Annoy index)."""
    kind = config.pop("kind", "annoy")
    return CellIndex.load(directory, prefix, **config) if kind == "cells" else AnnIndex.load(directory, prefix,
                                                                                            **config)


_SAFETENSORS_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def mmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as read-only memory maps (8-byte header length, JSON header, data)."""
    import json

    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, stop = info["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        count = (stop - start) // dtype.itemsize
        out[name] = (np.memmap(path, dtype=dtype, mode="r", offset=8 + header_len + start, shape=(count,))
                     .reshape(info["shape"]) if count else np.empty(info["shape"], dtype))
    return out


def kmeans(x: np.ndarray, n_cells: int, seed: int = 0, iters: int = KMEANS_ITERS) -> np.ndarray:
    """Lloyd's k-means on a sample of `KMEANS_SAMPLE` items per cell; an emptied cell restarts at a random
    sampled item."""
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), min(len(x), KMEANS_SAMPLE * n_cells), replace=False)]
    centroids = sample[rng.choice(len(sample), n_cells, replace=False)].copy()
    for _ in range(iters):
        cell = nearest_centroid(sample, centroids)
        order = np.argsort(cell, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(cell, minlength=n_cells))])
        means, filled = _cell_means(sample[order], bounds)
        centroids[filled] = means[filled]
        centroids[~filled] = sample[rng.choice(len(sample), int((~filled).sum()))]
    return centroids


def _cell_means(grouped: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean of each cell's rows, whether the cell has any) for rows grouped by cell (cell c: bounds[c:c+2])."""
    counts = np.diff(bounds)
    filled = counts > 0
    means = np.zeros((len(counts), grouped.shape[1]), np.float32)
    if filled.any():
        means[filled] = np.add.reduceat(grouped, bounds[:-1][filled], axis=0) / counts[filled, None]
    return means, filled


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (squared L2), in blocks that bound the distance matrix."""
    out = np.empty(len(x), np.int64)
    sq = (centroids ** 2).sum(1)
    step = max(1, EXACT_BLOCK // 8 // max(len(centroids), 1))
    for s in range(0, len(x), step):
        out[s:s + step] = (sq[None, :] - 2 * (x[s:s + step] @ centroids.T)).argmin(1)
    return out


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
        vectors, queries = _unit(vectors), _unit(queries)
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


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)


def describe(stats: dict) -> str:
    """An index setting in words, from its stats (`IndexStats.to_dict`, as in a bundle manifest; no 'kind' is
    an Annoy index): 'n_cells=1000 n_probe=8' or 'n_trees=50 search_k=400 ranges=7'."""
    if stats.get("kind", "annoy") == "cells":
        return f"n_cells={stats['n_cells']} n_probe={stats['n_probe']}"
    return f"n_trees={stats['n_trees']} search_k={stats['search_k']} ranges={stats['n_ranges']}"


# ---------------------------------------------------------------------------------------- for bundles
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
