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
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from safetensors.numpy import load_file, save_file

from ..exceptions import DataValidationError
from .topk import best_k

METRICS = ("ip", "angular")
NORM_QUANTILES = (0.002, 0.01, 0.03, 0.08, 0.2, 0.5, 1.0)  # top-heavy: big norms matter most for top-k
MIN_RANGE = 1000
EXACT_PREFIX = 32_768  # leading (largest-norm) ranges up to this many items are scored exactly


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


class Searchable:
    """`search` for both index kinds, from their `search_one`."""

    def search(self, queries: np.ndarray, vectors: np.ndarray | None, k: int) -> np.ndarray:
        """Top-k item indices per query (-1 padded)."""
        out = np.full((len(queries), k), -1, np.int64)
        for r, q in enumerate(queries):
            idx, _ = self.search_one(q, k, vectors)
            out[r, :len(idx)] = idx
        return out


class AnnIndex(Searchable):
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
            best_idx, best_scores = best_k(cand, scores, k)
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
            best_idx, best_scores = best_k(np.concatenate([best_idx, cand]),
                                           np.concatenate([best_scores, vectors[cand] @ q]), k)
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
