"""`CellIndex`: inverted lists over k-means cells (IVF): items are stored grouped by their
nearest of `n_cells` centroids, a query ranks the centroids by inner product and scores exactly every item of
the best `n_probe` cells (contiguous blocks: one matrix-vector product each). Where norms barely vary (MF's
vectors) the norm ranges cannot cut anything and the forests walk many nodes; the cells then pay more.
`tune_index` measures both kinds on the same queries and keeps the faster that reaches the target.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..exceptions import DataValidationError
from .exact import EXACT_BLOCK
from .forest import METRICS, Searchable
from .topk import best_k

KMEANS_SAMPLE = 32  # k-means trains on this many sampled items per cell
KMEANS_ITERS = 10


class CellIndex(Searchable):
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
        return best_k(np.concatenate(idx_parts), np.concatenate(score_parts), k)

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
