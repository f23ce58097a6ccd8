"""Exact top-k for one query from a quarter of the bytes: an int8 copy of the item vectors scores every item to
within a known bound, and only the items that bound leaves in reach of the k-th best are scored again, in
double precision. The answer is the exact answer up to double rounding (scores rounded to float32, ties by
index); reading 1 byte per coordinate instead of 4 is what makes it faster, since one query's scan is bound
by memory (benchmarks/scoring.py, benchmarks/README.md).

    codes = Int8Items.build(item_vectors)       # None where it is not used (see there)
    idx, val = codes.topk(query, k, excluded)   # or None: the caller scores in float32

Why the answer is exact. Each coordinate is divided by its column's largest magnitude c_j (a bias column
larger than the rest costs little), then item i is rounded to int8 codes x_i with one scale s_i: it is stored
as w_i = c s_i x_i. The query is rounded to int16 in the same scaled space, q' = t Q / c, so the first pass
sum_j Q_j x_ij is an exact integer and a_i = t s_i sum_j Q_j x_ij is q'.w_i up to three float32 roundings.
A score f_i computed from the float32 vectors differs from q.v_i by at most d u |q| |v_i| (u = 2^-24) in
float32, in any summation order, and by far less in double precision, so

    |a_i - f_i| <= |q| e_i + C,   e_i = |v_i - w_i|,
    C = |q - q'| max|w| + d u / (1 - d u) |q| max|v| + (the float32 roundings of a and of this bound).

G, the k-th largest of 64 interleaved group maxima of a - |q| e (of a - |q| e itself where there are fewer
than 64 k items), is at most the k-th largest of a - |q| e;
k items have f >= a - |q| e - C >= G - C, so every item of the top k by f (ties included) has
a + |q| e >= G - 2C. Those candidates, usually a few dozen, are scored again in double precision (eight
partial sums in a fixed order: an item scores the same wherever it sits, so equal items tie) and the k best
are kept, ties by index. A float32 scorer (BLAS, as batches are scored) can rank differently only items
whose float32 scores differ in their last bits.

Sparse columns. Columns that are mostly zeros (an item-item model's block in a blend: EASE's Woodbury form
stores each item's users, 98 % zeros on MovieLens) cost a byte per cell as codes but far less as a sparse
matrix. Columns with at most SPARSE_DENSITY nonzeros per item are kept out of the codes, in float32 CSR; their
part of every score, s_i, is added to a_i before the cut. Summed in float32 over at most m nonzeros,
|s_i - exact| <= m u / (1 - m u) |q_s| |v_s,i| (|v_s,i| the norm of item i's sparse part, at most P), and adding it
to a_i rounds once more, by at most u (|a_i| + |s_i|) <= u |q| (max|w| + max|v| + max e + P) + u C (|q_s|, |q_d| <= |q|,
|s_i| <= P |q|). Twice their sum, the slack S = |q| * slack_per_norm, is added to C (C being tiny, twice covers
u C), and candidates are scored again on every column: the answer is the same as without the split.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

try:
    from .. import _scan
except ImportError:  # built without a C compiler: every query is scored in float32
    _scan = None

# Fewer item coordinates than this (n x d): float32 scoring is faster than the int8 pass (the crossover
# measured by benchmarks/scoring.py --sizes; benchmarks/README.md)
MIN_CELLS = 1 << 16
ROWS_PER_CHUNK = 1 << 16  # rows converted to float64 at a time while building
MAX_CANDIDATE_SHARE = 0.25  # more candidates than this share of the items: scoring them all in float32 is cheaper
# A column with at most this share of nonzeros is scored sparse (8 bytes per nonzero against 1 per cell as codes,
# and a gather per nonzero); MIN_SPARSE_COLUMNS of them at least, or the split is not worth a second pass.
SPARSE_DENSITY = 1 / 16
MIN_SPARSE_COLUMNS = 16
_NONE = np.empty(0, np.int64)
_U = 2.0 ** -24


class Int8Items:
    """An int8 copy of float32 item vectors (n, d), one scale per item, for exact single-query top-k; mostly-zero
    columns in a sparse matrix instead (sparse=False: every column in the codes, the benchmarks' reference)."""

    def __init__(self, vectors: np.ndarray, sparse: bool = True):
        if _scan is None:
            raise RuntimeError("recsys._scan is not built (pip install needs a C compiler); use Int8Items.build, "
                               "which answers None instead.")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.vectors = vectors  # what candidates are scored with (not copied)
        self.dense_columns, self.sparse_columns, self.sparse = split_columns(vectors) if sparse else (None, None, None)
        if self.sparse is not None:
            vectors = vectors[:, self.dense_columns]
        n, d = vectors.shape
        self.d, self.dp = d, -(-d // 16) * 16
        column_peak = np.abs(vectors).max(axis=0) if n else np.ones(d, np.float32)
        self.columns = np.where(column_peak > 0, column_peak, 1).astype(np.float32)
        self.scales = np.empty(n, np.float32)
        self.codes = np.zeros((n, self.dp), np.int8)
        self.errors = np.empty(n, np.float32)
        norms = np.empty((n, 2))  # |w_i|, |v_i|
        columns = self.columns.astype(np.float64)
        for start in range(0, n, ROWS_PER_CHUNK):  # in float64, a chunk at a time (bounded memory)
            rows = slice(start, start + ROWS_PER_CHUNK)
            v = vectors[rows].astype(np.float64)
            scaled = v / columns
            peak = np.abs(scaled).max(axis=1) if d else np.zeros(len(v))
            self.scales[rows] = np.where(peak > 0, peak / 127, 1.0)
            s = self.scales[rows].astype(np.float64)[:, None]
            self.codes[rows, :d] = np.clip(np.rint(scaled / s), -127, 127)
            stored = self.codes[rows, :d] * s * columns
            errors = np.linalg.norm(v - stored, axis=1)
            self.errors[rows] = np.nextafter(errors.astype(np.float32), np.float32(np.inf))  # e_i, rounded up
            norms[rows, 0], norms[rows, 1] = np.linalg.norm(stored, axis=1), np.linalg.norm(v, axis=1)
        # what the bound C needs besides the query: (max |w_i|, max |v_i|, max e_i)
        self.bounds = (*(float(x) for x in norms.max(axis=0, initial=0.0)), float(self.errors.max(initial=0.0)))
        self.q_max = min(32767, (2 ** 31 - 1) // (127 * max(self.dp, 1)))  # int32 sums cannot overflow
        if self.sparse is not None:  # the slack S per unit of |q| (see the module docstring)
            m = int(np.diff(self.sparse.indptr).max(initial=0))  # the most nonzeros of a row
            rows = np.asarray(self.sparse.multiply(self.sparse).astype(np.float64).sum(axis=1))
            p = float(np.sqrt(rows.max(initial=0.0)))  # P, the largest norm of a row's sparse part
            max_stored, max_norm, max_error = self.bounds
            self.slack_per_norm = 2 * (m * _U / (1 - m * _U) * p + _U * (max_stored + max_norm + max_error + p))

    @classmethod
    def build(cls, vectors: np.ndarray) -> Int8Items | None:
        """An Int8Items for these vectors, or None where it is not used: fewer than MIN_CELLS coordinates,
        the extension not built, or a vector not finite."""
        if vectors.size < MIN_CELLS or _scan is None or not np.isfinite(vectors).all():
            return None
        return cls(vectors)

    @property
    def nbytes(self) -> int:
        sparse = 0 if self.sparse is None else self.sparse.data.nbytes + self.sparse.indices.nbytes + \
            self.sparse.indptr.nbytes + self.dense_columns.nbytes + self.sparse_columns.nbytes
        return self.codes.nbytes + self.scales.nbytes + self.errors.nbytes + self.columns.nbytes + sparse

    def topk(self, query: np.ndarray, k: int, excluded: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray] | None:
        """(item indices, float32 scores), k of each, best first with ties by index: what exact scoring of
        every item (excluded ones left out) and a stable sort would answer. None when this pass cannot decide
        cheaply (k not below the number of items, a zero or non-finite query, fewer than k items left,
        too many candidates): the caller scores in float32 instead."""
        n = len(self.codes)
        if not 0 < k < n:
            return None
        q = np.ascontiguousarray(query, dtype=np.float32)
        skip = _NONE if excluded is None else np.ascontiguousarray(excluded)
        if skip.dtype != np.int32 and skip.dtype != np.int64:
            skip = skip.astype(np.int64)
        idx, val = np.empty(k, np.int64), np.empty(k, np.float32)
        limit = max(k, int(MAX_CANDIDATE_SHARE * n))
        if self.sparse is None:
            answer = _scan.topk(self.codes, self.scales, self.columns, self.errors, self.vectors, q, self.q_max,
                                skip, k, self.bounds, limit, idx, val)
        else:
            q_sparse = q[self.sparse_columns]
            norm = float(np.sqrt(np.dot(q.astype(np.float64), q.astype(np.float64))))
            if not np.isfinite(norm):
                return None
            offsets = np.asarray(self.sparse @ q_sparse, dtype=np.float32)
            answer = _scan.topk(self.codes, self.scales, self.columns, self.errors, self.vectors,
                                np.ascontiguousarray(q[self.dense_columns]), self.q_max, skip, k, self.bounds, limit,
                                idx, val, offsets, self.slack_per_norm * norm, q)
        # None: a zero or non-finite query, fewer than k items left, or too many candidates
        return None if answer is None else (idx, val)


def split_columns(vectors: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, sp.csr_matrix | None]:
    """(the dense columns' indices, the sparse columns' indices, those columns as float32 CSR), or (None, None,
    None) when fewer than MIN_SPARSE_COLUMNS columns have at most SPARSE_DENSITY nonzeros or no column is dense."""
    n = len(vectors)
    nonzero = np.count_nonzero(vectors, axis=0) if n else np.zeros(vectors.shape[1], np.int64)
    sparse = nonzero <= SPARSE_DENSITY * n
    if sparse.sum() < MIN_SPARSE_COLUMNS or sparse.all():
        return None, None, None
    return np.flatnonzero(~sparse), np.flatnonzero(sparse), sp.csr_matrix(vectors[:, sparse])
