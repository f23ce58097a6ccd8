"""Top-k selection: the one implementation every ranking path uses (plus the C kernel of `int8`).

`topk` ranks rows of a score matrix; `best_k` the candidates an index returns. Equal scores rank by column
(candidate) index, so top-k is a prefix of top-(k+1) and answers do not depend on k.
"""
from __future__ import annotations

import numpy as np


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the column indices of the k largest finite scores, best first; -1 / -inf pad short rows.
    Equal scores rank by column index, so top-k is a prefix of top-(k+1)."""
    n_rows, n_cols = scores.shape
    kk = min(k, n_cols)
    if kk == 0:
        return np.full((n_rows, k), -1, np.int64), np.full((n_rows, k), -np.inf, np.float32)
    if n_rows == 1:
        idx, val = topk_of_row(scores[0], kk)
    elif n_cols >= THRESHOLD_MIN_COLS and kk * THRESHOLD_BLOCKS_PER_K <= n_cols // 8:
        idx, val = topk_by_threshold(scores, kk)
    else:
        idx, val = topk_by_partition(scores, kk)
    if kk < k:
        idx = np.pad(idx, ((0, 0), (0, k - kk)), constant_values=-1)
        val = np.pad(val, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return idx, val


# The threshold path: a row's kk-th largest block maximum is a lower bound on its kk-th largest score (the kk
# best blocks hold kk distinct scores at least that large), so only the scores at or above it, in the blocks
# whose maximum reaches it, need sorting: one pass over the scores (the block maxima) instead of a selection.
THRESHOLD_MIN_COLS = 2048
THRESHOLD_BLOCKS_PER_K = 16


def topk_by_threshold(scores: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
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
        idx[rest], val[rest] = topk_by_partition(scores[rest], kk)
        keep = np.flatnonzero(finite)
        if len(keep):
            idx[keep], val[keep] = topk_by_threshold(scores[keep], kk)
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


def topk_of_row(row: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
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


def topk_by_partition(scores: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
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


def best_k(idx: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (at most) k best of candidates `idx` with finite `scores`, best first (ties: candidate order)."""
    if not len(scores):
        return idx[:0].astype(np.int64), scores[:0].astype(np.float32)
    top, val = topk(np.asarray(scores)[None, :], k)
    keep = top[0] >= 0
    return idx[top[0][keep]], val[0][keep]
