"""The one place that answers "top k for this user / item / history, with these filters" (numpy only).

Models, the evaluator, the CLI and the server all rank through `Engine`, so offline evaluation and online
serving rank the same way. Scores are inner products `user_vector . item_vector`; item-to-item and
user-to-user similarity use cosine (or dot, for models whose vectors carry no direction, e.g. Popularity).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .bundle import Bundle, read_bundle
from .data import IdMap
from .exceptions import DataValidationError
from .foldin import FoldIn
from .index import EXACT_BLOCK, AnnIndex, CellIndex, load_index, time_per_query
from .quantized import Int8Items

SIMILARITIES = ("cosine", "dot")
SEARCH_MODES = ("auto", "exact", "ann")


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the column indices of the k largest finite scores, best first; -1 / -inf pad short rows.
    Equal scores rank by column index, so top-k is a prefix of top-(k+1)."""
    n_rows, n_cols = scores.shape
    kk = min(k, n_cols)
    if kk == 0:
        return np.full((n_rows, k), -1, np.int64), np.full((n_rows, k), -np.inf, np.float32)
    if n_rows == 1:
        idx, val = _topk_of_row(scores[0], kk)
    elif n_cols >= THRESHOLD_MIN_COLS and kk * THRESHOLD_BLOCKS_PER_K <= n_cols // 8:
        idx, val = _topk_by_threshold(scores, kk)
    else:
        idx, val = _topk_by_partition(scores, kk)
    if kk < k:
        idx = np.pad(idx, ((0, 0), (0, k - kk)), constant_values=-1)
        val = np.pad(val, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return idx, val


# The threshold path: a row's kk-th largest block maximum is a lower bound on its kk-th largest score (the kk
# best blocks hold kk distinct scores at least that large), so only the scores at or above it, in the blocks
# whose maximum reaches it, need sorting: one pass over the scores (the block maxima) instead of a selection.
THRESHOLD_MIN_COLS = 2048
THRESHOLD_BLOCKS_PER_K = 16


def _topk_by_threshold(scores: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    n_rows, n_cols = scores.shape
    block = max(8, n_cols // (THRESHOLD_BLOCKS_PER_K * kk))
    maxima = np.maximum.reduceat(scores, np.arange(0, n_cols, block), axis=1)
    n_blocks = maxima.shape[1]
    bound = np.partition(maxima, n_blocks - kk, axis=1)[:, n_blocks - kk]
    finite = np.isfinite(bound)
    if not finite.all():  # rows with fewer than kk finite blocks (mostly excluded): the general path
        idx = np.empty((n_rows, kk), np.int64)
        val = np.empty((n_rows, kk), np.float32)
        rest = np.flatnonzero(~finite)
        idx[rest], val[rest] = _topk_by_partition(scores[rest], kk)
        keep = np.flatnonzero(finite)
        if len(keep):
            idx[keep], val[keep] = _topk_by_threshold(scores[keep], kk)
        return idx, val
    rows, first = np.nonzero(maxima >= bound[:, None])  # the blocks that can hold a top-kk score
    cols = first[:, None] * block + np.arange(block)
    inside = cols < n_cols  # (the last block may be short)
    cols = np.minimum(cols, n_cols - 1)
    values = np.where(inside, scores[rows[:, None], cols], -np.inf)
    keep = values >= bound[rows][:, None]
    rows, cols, values = np.repeat(rows, keep.sum(axis=1)), cols[keep], values[keep]  # (row-major, as keep)
    order = np.lexsort((cols, -values, rows))  # by row, best first, ties by column
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    take = starts[:, None] + np.arange(kk)  # every row has at least kk survivors
    return cols[take].astype(np.int64), values[take].astype(np.float32)


ROW_GROUPS = 64  # one row's top-k: groups whose maxima bound the k-th score (a row needs > 64 * k columns)


def _topk_of_row(row: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """One row (every serving request). Its columns, read as ROW_GROUPS interleaved groups, give `width` group
    maxima in one vectorised pass; the kk-th largest maximum is a lower bound on the kk-th largest score (the
    kk best groups hold kk distinct scores at least that large), so the scores at or above it (about kk of
    them, ties included, in column order) are all that is sorted. Narrow rows select with a partition."""
    n = len(row)
    width = n // ROW_GROUPS
    if kk < width:
        maxima = row[:ROW_GROUPS * width].reshape(ROW_GROUPS, width).max(axis=0)
        cols = np.flatnonzero(row >= np.partition(maxima, width - kk)[width - kk])
    elif kk < n:
        cols = np.flatnonzero(row >= np.partition(row, n - kk)[n - kk])
    else:
        cols = np.arange(n)
    values = row[cols]
    order = np.argsort(-values, kind="stable")[:kk]
    idx, val = cols[order].astype(np.int64)[None, :], values[order].astype(np.float32)[None, :]
    idx[~np.isfinite(val)] = -1
    return idx, val


def _topk_by_partition(scores: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    n_rows, n_cols = scores.shape
    if kk < n_cols:
        neg = -scores
        part = np.argpartition(neg, kk - 1, axis=1)[:, :kk]
        # argpartition keeps an arbitrary subset of the scores tied at the k-th place; keep the lowest column
        # indices instead, so ties rank by column index whatever k is (as they do when kk == n_cols).
        part_neg = np.take_along_axis(neg, part, axis=1)
        kth = part_neg.max(axis=1)
        n_tied_in = (part_neg == kth[:, None]).sum(axis=1)
        for r in np.flatnonzero((neg == kth[:, None]).sum(axis=1) > n_tied_in):
            part[r] = np.concatenate([np.flatnonzero(neg[r] < kth[r]),
                                      np.flatnonzero(neg[r] == kth[r])[:n_tied_in[r]]])
        part = np.sort(part, axis=1)
    else:
        part = np.tile(np.arange(n_cols), (n_rows, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    val = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    idx[~np.isfinite(val)] = -1
    return idx, val


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Recommendation:
    """One user's answer (`Engine.recommend_user`): item ids best first, without padding, and their scores.

    fallback: True when the user is unknown and has no feedback, so the items are the most popular ones and
    the scores their user counts. Titles: `Engine.titles(item_ids)`.
    """

    user: object | None
    item_ids: np.ndarray  # external ids (str), object dtype
    scores: np.ndarray    # float32, best first
    fallback: bool
    item_index: np.ndarray | None = None  # the items' indices in the engine, when it made the answer


class Engine:
    """Exact top-k retrieval with exclusions, allow/deny lists and fold-in of unseen users.

    item_vectors (n_items, d), user_vectors (n_users, d): exported by a model. seen: users x items CSR of
    the training interactions (excluded by default). similarity_dims: how many leading dimensions
    similar_items / similar_users compare (None: all; a model with a bias column leaves it out).
    foldin: how a history becomes a user vector (`recsys.foldin.FoldIn`, or its dict form; default 'mean').
    projection: (n_items, d), the rows the 'linear' fold-in sums (None for every other method).
    indexes / index_stats / mode: optional Annoy indexes with their tuning measurements; mode 'auto' picks
    the index or exact scoring per call by what the measurements say is faster, 'exact' and 'ann' force one.

    >>> from recsys.data import IdMap
    >>> engine = Engine(np.eye(3, dtype=np.float32), np.array([[1, 0.5, 0]], np.float32), IdMap(["u"]),
    ...                 IdMap(["a", "b", "c"]))
    >>> engine.recommend(["u"], k=2)
    (array([['a', 'b']], dtype=object), array([[1. , 0.5]], dtype=float32))
    >>> engine.recommend_for_history(["a"], k=1, exclude_history=False)[0]
    array(['a'], dtype=object)
    """

    def __init__(self, item_vectors: np.ndarray, user_vectors: np.ndarray, users: IdMap, items: IdMap,
                 seen: sp.csr_matrix | None = None, foldin: FoldIn | dict | None = None, similarity: str = "cosine",
                 item_metadata: pd.DataFrame | None = None, batch_size: int = 1024,
                 similarity_dims: int | None = None, indexes: dict[str, AnnIndex | CellIndex] | None = None,
                 index_stats: dict[str, dict] | None = None, mode: str = "auto",
                 projection: np.ndarray | None = None):
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self.user_vectors = np.ascontiguousarray(user_vectors, dtype=np.float32)
        self.users, self.items = users, items
        if self.item_vectors.shape != (len(items), self.user_vectors.shape[1]) or \
                len(self.user_vectors) != len(users):
            raise DataValidationError(
                f"Vector shapes do not match the id maps: items {self.item_vectors.shape} for {len(items)} ids, "
                f"users {self.user_vectors.shape} for {len(users)} ids.")
        self.seen = seen if seen is not None else sp.csr_matrix((len(users), len(items)), dtype=np.float32)
        self.foldin = FoldIn.from_dict(foldin)
        self.projection = None if projection is None else np.ascontiguousarray(projection, dtype=np.float32)
        if self.foldin.method == "linear" and (self.projection is None or self.projection.shape !=
                                                self.item_vectors.shape):
            raise DataValidationError(f"The 'linear' fold-in needs a projection of shape {self.item_vectors.shape} "
                                      f"(one row per item). Got {None if projection is None else projection.shape}.")
        if similarity not in SIMILARITIES:
            raise DataValidationError(f"similarity must be one of {SIMILARITIES}. Got {similarity!r}.")
        self.similarity = similarity
        self.item_metadata = item_metadata
        self._titles: np.ndarray | None = None
        self._gram: dict[tuple, np.ndarray] = {}  # item_vectors.T @ item_vectors (by columns), for iALS fold-in
        self.batch_size = batch_size
        # similarity_dims: leading dimensions compared by similar_items/users (leaves out e.g. a bias column)
        dims = slice(0, similarity_dims)
        prep = normalise if similarity == "cosine" else np.ascontiguousarray
        self._item_sim = prep(self.item_vectors[:, dims])
        self._user_sim = prep(self.user_vectors[:, dims])
        # indexes: {"ip": index over item_vectors, "angular": index over the similarity vectors}; either kind
        # (recsys.index.AnnIndex forests or CellIndex cells)
        self.indexes = dict(indexes or {})
        self.index_stats = dict(index_stats or {})
        if mode not in SEARCH_MODES:
            raise DataValidationError(f"The 'mode' parameter must be one of {SEARCH_MODES}. Got {mode!r}.")
        self.mode = mode

    @property
    def n_items(self) -> int:
        return len(self.items)

    @functools.cached_property
    def item_codes(self) -> Int8Items | None:
        """The int8 copy of item_vectors that one query's exact top-k scans first (recsys/quantized.py: a
        quarter of the bytes, the same answer), made on first use and kept; None where it cannot be built or
        does not pay (`Int8Items.build`). item_vectors is not to be reassigned afterwards."""
        return Int8Items.build(self.item_vectors)

    @functools.cached_property
    def item_columns(self) -> np.ndarray:
        """item_vectors as a (d, n) C-contiguous copy, made on first use and kept: where there are no
        item_codes, one query is scored as `q @ item_columns`, which BLAS's column kernel reads faster than
        its row kernel reads item_vectors (benchmarks/scoring.py). item_vectors is not to be reassigned
        afterwards."""
        return np.ascontiguousarray(self.item_vectors.T)

    def prepare_serving(self) -> None:
        """Build now what every single-user answer reads (the int8 codes, else the column copy, and the
        popularity order) instead of on a first request: the service calls this when it loads a model, in
        gunicorn's master, so the forked workers share these arrays."""
        _ = self.popular_order
        if self.item_codes is None:
            _ = self.item_columns

    @property
    def similarity_vectors(self) -> np.ndarray:
        """The item vectors that item-to-item similarity compares (unit length for cosine)."""
        return self._item_sim

    # ------------------------------------------------------------------------------ index-level search
    def search(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | sp.csr_matrix | None = None,
               allow: np.ndarray | None = None, candidates: np.ndarray | None = None, metric: str = "ip",
               mode: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices by inner product of `queries` (b, d) with `candidates` (default: item_vectors).

        exclude: per-query item indices to leave out (a list of arrays, or a CSR with one row per query).
        allow: if given, only these item indices can be returned. When at least k items pass the filters,
        exactly k come back, best first. metric names the index that serves these candidates ('ip' for
        item_vectors, 'angular' for the similarity vectors); mode overrides the engine's mode for this call.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        vectors = self.item_vectors if candidates is None else candidates
        allow = None if allow is None else np.unique(np.asarray(allow, dtype=np.int64))
        if self._use_index(metric, len(queries), len(vectors) if allow is None else len(allow), mode):
            return self._index_search(self.indexes[metric], vectors, queries, k, exclude, allow)
        return self._exact_search(vectors, queries, k, exclude, allow)

    def _use_index(self, metric: str, n_queries: int, n_allowed: int, mode: str | None) -> bool:
        mode = mode or self.mode
        if mode == "exact" or metric not in self.indexes or n_allowed == 0:
            return False
        if mode == "ann":
            return True
        stats = self.index_stats.get(metric)
        if not stats:
            return False
        # Exact cost scales with the allowed share of the catalogue; the index must over-fetch by its inverse.
        share = n_allowed / self.n_items
        exact_ms = (stats["exact_ms"] if n_queries == 1 else stats["exact_batch_ms"]) * share
        return stats["recall"] >= stats["target_recall"] and stats["ann_ms"] / max(share, 1e-9) < exact_ms

    def calibrate(self, n_queries: int = 50, k: int = 10, seed: int = 0) -> dict[str, dict]:
        """Re-measure, here, what `mode='auto'` decides by: per index, ms per single-query answer through the
        index and by exact scoring, as requests ask them ('ip': a sampled training user, their seen items
        excluded; 'angular': a sampled item, itself excluded), `n_queries` of each. The bundle's figures were
        taken where and while it was built (another machine, other load, other threads); the service calls
        this once when it loads a model, before it serves (the engine's `mode` is switched while measuring).
        Returns the updated `index_stats`."""
        rng = np.random.default_rng(seed)
        for metric in self.indexes:
            stats = self.index_stats.get(metric)
            if not stats:
                continue
            if metric == "ip":
                rows = rng.choice(len(self.users), min(n_queries, len(self.users)), replace=False)
                ask = functools.partial(self.recommend_indices, k=k)
            else:
                rows = rng.choice(self.n_items, min(n_queries, self.n_items), replace=False)
                ask = functools.partial(self.similar_item_indices, k=k)
            for key, mode in (("exact_ms", "exact"), ("ann_ms", "ann")):
                stats[key] = round(_ms_per_query(ask, rows, self, mode), 4)
            stats["calibrated"] = True
        return self.index_stats

    def _index_search(self, index: AnnIndex | CellIndex, vectors: np.ndarray, queries: np.ndarray, k: int,
                      exclude: Sequence[np.ndarray] | sp.csr_matrix | None, allow: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray]:
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

    def _exact_search(self, vectors: np.ndarray, queries: np.ndarray, k: int,
                      exclude: Sequence[np.ndarray] | sp.csr_matrix | None, allow: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray]:
        if len(queries) == 1 and allow is None:  # one user, no allow-list: every serving request
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

    def recommend_indices(self, user_index: np.ndarray, k: int = 10, exclude_seen: bool = True,
                          allow: np.ndarray | None = None, deny: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
        user_index = np.asarray(user_index, dtype=np.int64)
        if len(user_index) == 1:  # one user (every serving request): read the CSR row, no scipy indexing
            u = int(user_index[0])
            parts = [self.seen.indices[self.seen.indptr[u]:self.seen.indptr[u + 1]]] if exclude_seen else []
            if deny is not None:
                parts.append(deny[deny >= 0])
            exclude = None if not parts else [parts[0] if len(parts) == 1 else np.concatenate(parts)]
        else:
            exclude = _combine_exclusions(self.seen[user_index] if exclude_seen else None, deny, len(user_index),
                                          self.n_items)
        return self.search(self.user_vectors[user_index], k, exclude=exclude, allow=allow)

    def fold_in(self, item_index: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """A user vector for a history of item indices (optional weights), from the item vectors alone: the
        model's own user solve, as its `recsys.foldin.FoldIn` config says (no retraining)."""
        return self.foldin.user_vector(self.item_vectors, item_index, weights, self._gramian, self.user_vectors,
                                       self.projection)

    def _gramian(self, columns: slice | None = None) -> np.ndarray:
        """item_vectors[:, columns].T @ item_vectors[:, columns], made on first use and kept (a blend's parts
        each ask for their own columns' block, never the whole blend's)."""
        key = (None, None) if columns is None else (columns.start, columns.stop)
        if key not in self._gram:
            vectors = self.item_vectors if columns is None else self.item_vectors[:, columns]
            self._gram[key] = vectors.T @ vectors
        return self._gram[key]

    def similar_item_indices(self, item_index: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        item_index = np.asarray(item_index, dtype=np.int64)
        return self.search(self._item_sim[item_index], k, exclude=[np.array([i]) for i in item_index],
                           candidates=self._item_sim, metric="angular" if self.similarity == "cosine" else "dot")

    def similar_user_indices(self, user_index: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        user_index = np.asarray(user_index, dtype=np.int64)
        return self.search(self._user_sim[user_index], k, exclude=[np.array([u]) for u in user_index],
                           candidates=self._user_sim, metric="users")

    # ---------------------------------------------------------------------------------- id-level API
    def recommend(self, user_ids: Iterable[object], k: int = 10, exclude_seen: bool = True,
                  items: Iterable[object] | None = None, exclude: Iterable[object] | None = None,
                  filters: dict[str, object] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), each (n_users, k), for known users.

        items: an allow-list of item ids; exclude: a deny-list; filters: item attributes, e.g.
        {"genres": ["Comedy", "Drama"]} (any of these), combined with each other and the lists by AND.
        """
        _check_k(k)
        user_index = self.users.to_index(user_ids, kind="user")
        allow = self.allowed_items(items, filters)
        deny = None if exclude is None else self.items.to_index(exclude, missing="ignore")
        idx, val = self.recommend_indices(user_index, k, exclude_seen, allow=allow, deny=deny)
        return self.items.to_ids(idx), val

    def recommend_for_history(self, item_ids: Iterable[object], k: int = 10, exclude_history: bool = True,
                              weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of shape (k,) for an unseen user described by the items they interacted with."""
        _check_k(k)
        history = self.items.to_index(list(item_ids), missing="ignore")
        keep = history >= 0
        history = history[keep]
        w = None if weights is None else np.asarray(weights, np.float32)[keep]
        idx, val = self.history_indices(history, k, w, hide=history if exclude_history else None)
        return self.items.to_ids(idx), val

    def history_indices(self, history: np.ndarray, k: int, weights: np.ndarray | None = None,
                        hide: np.ndarray | None = None, allow: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (item indices, scores), shape (k,), for a user folded in from `history` (item indices);
        `hide` lists item indices to leave out (typically the history itself), `allow` restricts."""
        vector = self.fold_in(history, weights)
        hide = None if hide is None else [np.asarray(hide, dtype=np.int64)]  # (repeats are harmless)
        idx, val = self.search(vector[None, :], k, exclude=hide, allow=allow)
        return idx[0], val[0]

    def similar_items(self, item_ids: Iterable[object], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k)
        idx, val = self.similar_item_indices(self.items.to_index(item_ids, kind="item"), k)
        return self.items.to_ids(idx), val

    def similar_users(self, user_ids: Iterable[object], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k)
        idx, val = self.similar_user_indices(self.users.to_index(user_ids, kind="user"), k)
        return self.users.to_ids(idx), val

    def allowed_items(self, items: Iterable[object] | None = None, filters: dict[str, object] | None = None
                      ) -> np.ndarray | None:
        """Item indices passing an allow-list of ids and attribute filters (None: no restriction)."""
        allow = None if items is None else np.unique(self.items.to_index(items, kind="item"))
        if filters:
            passing = np.flatnonzero(self.attribute_mask(filters))
            allow = passing if allow is None else np.intersect1d(allow, passing)
        return allow

    def attribute_mask(self, filters: dict[str, object]) -> np.ndarray:
        """Boolean mask over items: for every column, the item's value (or any of its list values, e.g.
        genres) is one of the wanted values."""
        meta = self.item_metadata
        if meta is None:
            raise DataValidationError("This model has no item metadata, so attribute filters cannot apply. "
                                      "Train with item metadata (CLI: --items) or drop the filter.")
        mask = np.ones(self.n_items, bool)
        for column, wanted in filters.items():
            if column not in meta.columns or column == "item":
                raise DataValidationError(f"Unknown item attribute {column!r} in filters. Available: "
                                          f"{[c for c in meta.columns if c != 'item']}.")
            values = set(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else {wanted}
            col = meta[column].to_numpy(dtype=object)
            mask &= np.fromiter(
                ((not values.isdisjoint(v)) if isinstance(v, (list, tuple, np.ndarray)) else v in values
                 for v in col), dtype=bool, count=len(col))
        return mask

    def recommend_all(self, k: int = 10, exclude_seen: bool = True, batch_size: int = 4096) -> pd.DataFrame:
        """Top-k for every known user: a frame with columns user, item, rank, score (best first)."""
        return pd.concat(self.recommend_batches(k, exclude_seen, batch_size), ignore_index=True)

    def recommend_batches(self, k: int = 10, exclude_seen: bool = True, batch_size: int = 4096
                          ) -> Iterator[pd.DataFrame]:
        """`recommend_all` as one frame per `batch_size` users, in user order: memory bounded by a batch (the
        exact batched product: for many users at once it beats any index)."""
        _check_k(k)
        for start in range(0, len(self.users), batch_size):
            users = np.arange(start, min(start + batch_size, len(self.users)))
            idx, scores = self.recommend_indices(users, k, exclude_seen)
            valid = idx >= 0
            yield pd.DataFrame({
                "user": np.repeat(self.users.ids[users], k)[valid.ravel()].astype(str),
                "item": self.items.ids[idx[valid]].astype(str),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))[valid.ravel()],
                "score": scores[valid].astype(np.float32)})

    def titles(self, item_ids: np.ndarray) -> np.ndarray | None:
        """Titles for external item ids (None where unknown), if the bundle has item metadata."""
        return self._titles_at(self.items.to_index(np.ravel(item_ids), missing="ignore"), np.shape(item_ids))

    def _titles_at(self, idx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
        if self._titles is None:  # built once: per-request conversion of the column was a hot spot
            if self.item_metadata is None or "title" not in self.item_metadata:
                return None
            titles = self.item_metadata["title"].to_numpy(dtype=object).copy()
            titles[pd.isna(titles)] = None
            self._titles = titles
        out = self._titles[np.maximum(idx, 0)]
        out[idx < 0] = None
        return out.reshape(shape)

    def scored_items(self, item_ids: np.ndarray, scores: np.ndarray, item_index: np.ndarray | None = None
                     ) -> list[dict[str, object]]:
        """[{"id", "score", "title"}, ...] for item ids best first and their scores, None ids (the padding of a
        short answer) left out: the item list the service answers and `recsys recommend --json` prints.
        item_index: the items' indices, when known (`Recommendation.item_index`): titles without a look-up."""
        return [{"id": i, "score": sc, "title": t} for i, sc, t in zip(*self.scored_item_fields(item_ids, scores,
                                                                                               item_index))]

    def scored_item_fields(self, item_ids: np.ndarray, scores: np.ndarray, item_index: np.ndarray | None = None
                           ) -> tuple[list[str], list[float], list[str | None]]:
        """What `scored_items` lists, as three lists (ids, scores, titles): for an encoder that writes the
        item list without building its dicts (the service's recommendations answer)."""
        item_ids = np.asarray(item_ids, dtype=object)
        if item_index is None:
            valid = np.not_equal(item_ids, None)
            item_ids, scores = item_ids[valid], np.asarray(scores)[valid]
            titles = self.titles(item_ids)
        else:
            titles = self._titles_at(np.asarray(item_index), np.shape(item_ids))
        titles = [None] * len(item_ids) if titles is None else [None if t is None else str(t) for t in titles.tolist()]
        return [str(i) for i in item_ids.tolist()], np.asarray(scores, dtype=np.float64).tolist(), titles

    # ------------------------------------------------------------------------ one user's answer (serving)
    def recommend_user(self, user: object | None, k: int = 10, *, offset: int = 0, exclude: Iterable[object] = (),
                       filters: dict[str, object] | None = None, include_seen: bool = False,
                       history: Sequence[tuple[object, float]] | None = None) -> Recommendation:
        """Top-k items for one user, as the service and the CLI answer: known, folded in, or popular.

        Parameters
        ----------
        user : object or None
            The user's id. A user the bundle knows is scored with their own vector; an unknown one without
            history gets the most popular items (``fallback`` is True). None: an anonymous session described
            by `history` alone (no known item in it: the popularity fallback).
        k : int
            How many items to return (fewer only when fewer pass the filters).
        offset : int
            Skip this many of the best items (paging): the answer is items ``offset .. offset + k - 1`` of
            the top ``k + offset``.
        exclude : iterable of item ids
            Items to leave out; ids the bundle does not know are ignored.
        filters : dict, optional
            Item attributes, e.g. ``{"genres": ["Comedy"]}``, as `attribute_mask` takes them.
        include_seen : bool
            Allow items the user has seen (the bundle's interactions and `history`); excluded by default.
        history : sequence of (item_id, weight), optional
            The user's stored feedback events, oldest first (what `recsys.feedback.FeedbackStore.history`
            returns). When given, the user is folded in from what the bundle knows about them plus these
            events (positive weights only), with no retraining; unknown item ids are ignored.

        Returns
        -------
        Recommendation
            Item ids best first with their scores (user counts for the fallback), and the fallback flag.

        Examples
        --------
        >>> import numpy as np
        >>> from recsys.data import IdMap
        >>> engine = Engine(np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), np.array([[1.0, 0.2]]),
        ...                 IdMap(["ann"]), IdMap(["a", "b", "c"]))
        >>> rec = engine.recommend_user("ann", k=2)
        >>> rec.item_ids.tolist(), rec.fallback
        (['a', 'c'], False)
        >>> engine.recommend_user("ann", k=1, offset=1).item_ids.tolist()
        ['c']
        >>> engine.recommend_user("stranger", k=2).fallback  # unknown, no feedback: the most popular items
        True
        """
        _check_k(k)
        _check_offset(offset)
        n = k + offset
        deny = self.items.to_index(exclude, missing="ignore") if exclude else np.empty(0, np.int64)
        deny = deny[deny >= 0]
        allow = self.allowed_items(None, filters)
        found = None
        if history or user is None:
            found = self._folded_in(user, history or (), n, deny, allow, include_seen)
        elif user in self.users:
            idx, val = self.recommend_indices(np.array([self.users.index(user, "user")]), n,
                                              exclude_seen=not include_seen, allow=allow,
                                              deny=deny if len(deny) else None)
            found = idx[0], val[0]
        fallback = found is None
        idx, val = self._popular_indices(n, deny, allow) if fallback else found
        valid = idx >= 0
        idx, val = idx[valid][offset:], val[valid][offset:]
        return Recommendation(user, self.items.ids[idx], val, fallback, idx)

    def _folded_in(self, user: object | None, history: Sequence[tuple[object, float]], n: int, deny: np.ndarray,
                   allow: np.ndarray | None, include_seen: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-n for a user folded in from the bundle's items for them plus `history`; None for an anonymous
        history without a known item (the caller falls back to popularity)."""
        items = self.items.to_index([i for i, _ in history], missing="ignore")
        weights = np.asarray([w for _, w in history], np.float32)[items >= 0]
        items = items[items >= 0]
        if user is None and not len(items):
            return None
        if user is not None and user in self.users:  # what the bundle already knows about this user counts too
            u = self.users.index(user, "user")
            known = self.seen.indices[self.seen.indptr[u]:self.seen.indptr[u + 1]]
            items = np.concatenate([known, items])
            weights = np.concatenate([np.ones(len(known), np.float32), weights])
        positive = weights > 0
        hide = deny if include_seen else np.concatenate([deny, items])
        return self.history_indices(items[positive], n, weights[positive], hide=hide, allow=allow)

    def popular_items(self, k: int = 10, *, exclude: Iterable[object] = (),
                      filters: dict[str, object] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), shape (at most k,), of the items most users interacted with in the bundle, best
        first (ties by index); scores are those user counts. exclude / filters as in `recommend_user`."""
        _check_k(k)
        deny = self.items.to_index(exclude, missing="ignore")
        idx, counts = self._popular_indices(k, deny[deny >= 0], self.allowed_items(None, filters))
        return self.items.ids[idx], counts

    def _popular_indices(self, n: int, deny: np.ndarray, allow: np.ndarray | None
                         ) -> tuple[np.ndarray, np.ndarray]:
        order = self.popular_order
        if allow is not None:
            allowed = np.zeros(self.n_items, bool)
            allowed[allow] = True
            order = order[allowed[order]]
        if len(deny):
            order = order[~np.isin(order, deny)]
        top = order[:n]
        return top, self.popularity[top]

    @property
    def popularity(self) -> np.ndarray:
        """How many users interacted with each item in the bundle's `seen` matrix (float32, per item index)."""
        return self._popularity[1]

    @property
    def popular_order(self) -> np.ndarray:
        """Item indices, most interacted first (ties by index)."""
        return self._popularity[0]

    @functools.cached_property
    def _popularity(self) -> tuple[np.ndarray, np.ndarray]:  # computed on first use, then kept
        counts = np.asarray(self.seen.astype(bool).sum(axis=0)).ravel()
        return np.argsort(-counts, kind="stable"), counts.astype(np.float32)

    def item_record(self, item_id: object) -> dict[str, object]:
        """The item's metadata row as a plain dict: {"item": id, column: value, ...}. Values are as stored,
        except list-likes (genres, tags), which become lists of str; missing values are left out. Just
        {"item": id} when the bundle has no item metadata; an unknown id raises UnknownIdError."""
        i = self.items.index(item_id, kind="item")
        record: dict[str, object] = {"item": str(self.items.ids[i])}
        if self.item_metadata is None:
            return record
        for column, value in self.item_metadata.iloc[i].items():
            if column == "item":
                continue
            if isinstance(value, (list, tuple, np.ndarray)):
                record[column] = [str(v) for v in value]
            elif not _is_missing(value):
                record[column] = value
        return record


def _ms_per_query(ask, rows: np.ndarray, engine: Engine, mode: str) -> float:
    """Milliseconds per call of `ask(np.array([row]))` with `engine.mode` set to `mode`, over `rows` after one
    warm-up call."""
    previous, engine.mode = engine.mode, mode
    try:
        ask(rows[:1])
        return time_per_query(lambda: [ask(rows[r:r + 1]) for r in range(len(rows))], len(rows))
    finally:
        engine.mode = previous


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataValidationError(f"The 'k' parameter must be an int >= 1. Got {k!r}.")


def _check_offset(offset: int) -> None:
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise DataValidationError(f"The 'offset' parameter must be an int >= 0. Got {offset!r}.")


def _is_missing(value: object) -> bool:
    """None, NaN and pandas' missing markers (<NA>, nan as text)."""
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value) in ("<NA>", "nan")


def _keep_filter(allowed: np.ndarray | None, excluded: np.ndarray):
    if allowed is None and not len(excluded):
        return None

    def keep(cand: np.ndarray) -> np.ndarray:
        mask = np.ones(len(cand), bool) if allowed is None else allowed[cand]
        return mask & ~np.isin(cand, excluded) if len(excluded) else mask
    return keep


def _row_exclusions(exclude: Sequence[np.ndarray] | sp.csr_matrix | None, r: int) -> np.ndarray:
    if exclude is None:
        return np.empty(0, np.int64)
    if sp.issparse(exclude):
        return exclude.indices[exclude.indptr[r]:exclude.indptr[r + 1]].astype(np.int64)
    return np.unique(np.asarray(exclude[r], dtype=np.int64))


def _exclusion_pairs(exclude: Sequence[np.ndarray] | sp.csr_matrix, start: int, stop: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    if sp.issparse(exclude):
        block = exclude[start:stop]
        rows = np.repeat(np.arange(stop - start), np.diff(block.indptr))
        return rows, block.indices.astype(np.int64)
    parts = [np.asarray(e, dtype=np.int64) for e in exclude[start:stop]]
    rows = np.repeat(np.arange(stop - start), [len(p) for p in parts])
    cols = np.concatenate(parts) if parts else np.empty(0, np.int64)
    return rows, cols


def _combine_exclusions(seen_rows: sp.csr_matrix | None, deny: np.ndarray | None, n_rows: int, n_items: int
                        ) -> sp.csr_matrix | None:
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


def load_engine(path: str | Path, mode: str = "auto") -> tuple[Engine, Bundle]:
    """Load and verify a bundle into an Engine (numpy + annoy only: no torch, no model classes).

    The server and the CLI answer queries through this; `recsys.models.load` builds on it.
    """
    bundle = read_bundle(path)
    m = bundle.manifest
    engine = Engine(bundle.arrays["item_vectors"], bundle.arrays["user_vectors"], bundle.users, bundle.items,
                    seen=bundle.seen(), foldin=m.foldin, similarity=m.similarity,
                    item_metadata=bundle.item_metadata, similarity_dims=m.similarity_dims, mode=mode,
                    projection=bundle.arrays.get("foldin_projection"))
    for metric, info in m.index.items():
        engine.indexes[metric] = load_index(bundle.path, info["prefix"], **info["config"])
        engine.index_stats[metric] = info["stats"]
    return engine, bundle
