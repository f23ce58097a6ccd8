"""`Retriever`: top-k item indices by inner product for a batch of query vectors, exact or through an index,
with per-query exclusions and an allow-list, deciding per call which is faster."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from ..exceptions import DataValidationError
from .calibrate import time_per_query
from .cells import CellIndex
from .exact import EXACT_BLOCK
from .forest import AnnIndex
from .int8 import Int8Items
from .topk import topk

SEARCH_MODES = ("auto", "exact", "ann")
Exclusions = Sequence[np.ndarray] | sp.csr_matrix  # per query: item indices to leave out


class Retriever:
    """Exact and indexed top-k over `item_vectors` (n_items, d); other candidate sets (e.g. unit vectors for
    cosine) are passed per call with the `metric` that names their index.

    indexes: {metric: AnnIndex | CellIndex}; index_stats: {metric: what `calibrate.tune_index` measured}.
    mode 'auto' uses an index where its measurements say it is faster than exact scoring for this call (the
    number of queries and the allowed share of the catalogue), 'exact' and 'ann' force one. batch_size: the
    most queries scored in one product.
    """

    def __init__(self, item_vectors: np.ndarray, indexes: dict[str, AnnIndex | CellIndex] | None = None,
                 index_stats: dict[str, dict] | None = None, mode: str = "auto", batch_size: int = 1024):
        if mode not in SEARCH_MODES:
            raise DataValidationError(f"The 'mode' parameter must be one of {SEARCH_MODES}. Got {mode!r}.")
        self.item_vectors = item_vectors
        self.indexes = dict(indexes or {})
        self.index_stats = dict(index_stats or {})
        self.mode = mode
        self.batch_size = batch_size

    @functools.cached_property
    def item_codes(self) -> Int8Items | None:
        """The int8 copy of item_vectors that one query's exact top-k scans first (`int8`: a quarter of the
        bytes, the same answer), made on first use and kept; None where it cannot be built or does not pay
        (`Int8Items.build`). item_vectors is not to be reassigned afterwards."""
        return Int8Items.build(self.item_vectors)

    @functools.cached_property
    def item_columns(self) -> np.ndarray:
        """item_vectors as a (d, n) C-contiguous copy, made on first use and kept: where there are no
        item_codes, one query is scored as `q @ item_columns`, which BLAS's column kernel reads faster than
        its row kernel reads item_vectors (benchmarks/scoring.py)."""
        return np.ascontiguousarray(self.item_vectors.T)

    def prepare(self) -> None:
        """Build now what every single-query answer reads (the int8 codes, else the column copy)."""
        if self.item_codes is None:
            _ = self.item_columns

    def search(self, queries: np.ndarray, k: int, exclude: Exclusions | None = None, allow: np.ndarray | None = None,
               candidates: np.ndarray | None = None, metric: str = "ip", mode: str | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices by inner product of `queries` (b, d) with `candidates` (default: item_vectors).

        exclude: per-query item indices to leave out (a list of arrays, or a CSR with one row per query).
        allow: if given, only these item indices can be returned. When at least k items pass the filters,
        exactly k come back, best first; -1 / -inf pad the rest. metric names the index that serves these
        candidates ('ip' for item_vectors); mode overrides the retriever's mode for this call.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        vectors = self.item_vectors if candidates is None else candidates
        allow = None if allow is None else np.unique(np.asarray(allow, dtype=np.int64))
        if self.use_index(metric, len(queries), len(vectors) if allow is None else len(allow), mode):
            return self._index_search(self.indexes[metric], vectors, queries, k, exclude, allow)
        return self._exact_search(vectors, queries, k, exclude, allow)

    def use_index(self, metric: str, n_queries: int, n_allowed: int, mode: str | None = None) -> bool:
        """Whether a call with `n_queries` queries over `n_allowed` allowed items goes through the index."""
        mode = mode or self.mode
        if mode == "exact" or metric not in self.indexes or n_allowed == 0:
            return False
        if mode == "ann":
            return True
        stats = self.index_stats.get(metric)
        if not stats:
            return False
        # Exact cost scales with the allowed share of the catalogue; the index must over-fetch by its inverse.
        share = n_allowed / len(self.item_vectors)
        exact_ms = (stats["exact_ms"] if n_queries == 1 else stats["exact_batch_ms"]) * share
        return stats["recall"] >= stats["target_recall"] and stats["ann_ms"] / max(share, 1e-9) < exact_ms

    def ms_per_query(self, ask: Callable[[np.ndarray], object], rows: np.ndarray, mode: str) -> float:
        """Milliseconds per call of `ask(np.array([row]))` with this retriever's mode set to `mode`, over
        `rows` after one warm-up call (what `Engine.calibrate` compares)."""
        previous, self.mode = self.mode, mode
        try:
            ask(rows[:1])
            return time_per_query(lambda: [ask(rows[r:r + 1]) for r in range(len(rows))], len(rows))
        finally:
            self.mode = previous

    def _index_search(self, index: AnnIndex | CellIndex, vectors: np.ndarray, queries: np.ndarray, k: int,
                      exclude: Exclusions | None, allow: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Per query: fetch candidates, drop filtered ones and re-score exactly; fetch more (doubling) until
        k pass, falling back to an exact scan once over-fetching would cost more than the scan."""
        n = len(vectors)
        allowed = None
        if allow is not None:
            allowed = np.zeros(n, bool)
            allowed[allow] = True
        share = 1.0 if allow is None else max(len(allow), 1) / n
        out_idx = np.full((len(queries), k), -1, np.int64)
        out_val = np.full((len(queries), k), -np.inf, np.float32)
        for r, q in enumerate(queries):
            excluded = _row_exclusions(exclude, r)
            n_passing = n - len(excluded) if allowed is None else len(allow) - int(allowed[excluded].sum())
            want = min(k, n_passing)
            keep = _keep_filter(allowed, excluded)
            fetch = int(np.ceil((k * index.fetch + len(excluded)) / share * 1.2))
            found = None
            while fetch * index.n_ranges <= max(n // 4, k):
                idx, val = index.search_one(q, k, vectors, n_fetch=fetch, keep=keep)
                if len(idx) >= want:
                    found = idx, val
                    break
                fetch *= 2
            if found is None:  # scanning is cheaper than fetching more: exact for this query
                idx, val = self._exact_search(vectors, q[None, :], k, [excluded], allow)
                out_idx[r], out_val[r] = idx[0], val[0]
                continue
            out_idx[r, :len(found[0])], out_val[r, :len(found[0])] = found
        return out_idx, out_val

    def _exact_search(self, vectors: np.ndarray, queries: np.ndarray, k: int, exclude: Exclusions | None,
                      allow: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if len(queries) == 1 and allow is None:  # one query, no allow-list: every serving request
            excluded = None if exclude is None else (
                exclude.indices[exclude.indptr[0]:exclude.indptr[1]] if sp.issparse(exclude) else exclude[0])
            codes = self.item_codes if vectors is self.item_vectors else None
            found = None if codes is None else codes.topk(queries[0], k, excluded)
            if found is not None:
                return found[0][None, :].astype(np.int64), found[1][None, :]
            if codes is not None or vectors is not self.item_vectors:
                scores = (vectors @ queries[0])[None, :]
            else:
                scores = (queries[0] @ self.item_columns)[None, :]
            if excluded is not None:
                scores[0, excluded] = -np.inf
            return topk(scores, k)
        out_idx = np.empty((len(queries), k), np.int64)
        out_val = np.empty((len(queries), k), np.float32)
        position = None
        if allow is not None:
            position = np.full(len(vectors), -1, np.int64)
            position[allow] = np.arange(len(allow))
            vectors = vectors[allow]
        step = max(1, min(self.batch_size, EXACT_BLOCK // max(len(vectors), 1)))  # bounded score matrix
        for start in range(0, len(queries), step):
            stop = min(start + step, len(queries))
            scores = queries[start:stop] @ vectors.T
            if exclude is not None:
                rows, cols = _exclusion_pairs(exclude, start, stop)
                if position is not None:
                    cols = position[cols]
                    rows, cols = rows[cols >= 0], cols[cols >= 0]
                scores[rows, cols] = -np.inf
            idx, val = topk(scores, k)
            if allow is not None and len(allow):  # (an empty allow-list leaves only -1 padding)
                idx = np.where(idx >= 0, allow[np.maximum(idx, 0)], -1)
            out_idx[start:stop], out_val[start:stop] = idx, val
        return out_idx, out_val


def _keep_filter(allowed: np.ndarray | None, excluded: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    if allowed is None and not len(excluded):
        return None

    def keep(cand: np.ndarray) -> np.ndarray:
        mask = np.ones(len(cand), bool) if allowed is None else allowed[cand]
        return mask & ~np.isin(cand, excluded) if len(excluded) else mask
    return keep


def _row_exclusions(exclude: Exclusions | None, r: int) -> np.ndarray:
    if exclude is None:
        return np.empty(0, np.int64)
    if sp.issparse(exclude):
        return exclude.indices[exclude.indptr[r]:exclude.indptr[r + 1]].astype(np.int64)
    return np.unique(np.asarray(exclude[r], dtype=np.int64))


def _exclusion_pairs(exclude: Exclusions, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    if sp.issparse(exclude):
        block = exclude[start:stop]
        rows = np.repeat(np.arange(stop - start), np.diff(block.indptr))
        return rows, block.indices.astype(np.int64)
    parts = [np.asarray(e, dtype=np.int64) for e in exclude[start:stop]]
    rows = np.repeat(np.arange(stop - start), [len(p) for p in parts])
    cols = np.concatenate(parts) if parts else np.empty(0, np.int64)
    return rows, cols


def combine_exclusions(seen_rows: sp.csr_matrix | None, deny: np.ndarray | None, n_rows: int, n_items: int
                       ) -> sp.csr_matrix | None:
    """One CSR of exclusions per query row: the stored entries of `seen_rows` (whatever their weight) plus the
    item indices in `deny` for every row (negative ones ignored); None when there is nothing to exclude."""
    if deny is not None:
        deny = deny[deny >= 0]
    if seen_rows is None and (deny is None or len(deny) == 0):
        return None
    out = sp.csr_matrix((n_rows, n_items), dtype=np.float32) if seen_rows is None else seen_rows.copy()
    out.data = np.ones_like(out.data)  # structural: a stored weight of 0 or -1 still excludes the item
    if deny is not None and len(deny):
        block = sp.csr_matrix((np.ones(n_rows * len(deny), np.float32),
                               (np.repeat(np.arange(n_rows), len(deny)), np.tile(deny, n_rows))),
                              shape=(n_rows, n_items))
        out = (out + block).tocsr()
    return out
