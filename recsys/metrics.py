"""Ranking metrics over top-K recommendation lists (pure numpy/scipy, no model code).

Inputs shared by every function:

* ``top_items``: int array of shape ``(n_users, K)``, the item indices recommended to each user,
  best first. ``-1`` pads a row when fewer than K items could be recommended; a padded slot is
  never a hit and is never counted in coverage. An item appears at most once per row.
* ``relevant``: scipy.sparse matrix of shape ``(n_users, n_items)`` in the same row order; a
  stored nonzero marks a relevant (held-out) item. Values are ignored apart from being nonzero.

Definitions, for one user with ``R`` relevant items and hits at 0-based positions ``i < K``:

* precision@K = hits / K
* recall@K    = hits / min(K, R)
* ndcg@K      = sum(1 / log2(i + 2)) / sum over j < min(K, R) of 1 / log2(j + 2)
* map@K       = mean over users of AP@K = sum(precision@(i + 1)) / min(K, R)
* hit_rate@K  = 1 if hits > 0 else 0
* coverage@K  = distinct items in the top K of any evaluated user / n_items

Users with no relevant item are skipped (NaN per user, excluded from the averages).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from .retrieval.exact import normalise

__all__ = ["PER_USER_METRICS", "beyond_accuracy", "list_ndcg", "per_user_metrics", "ranking_metrics"]

#: Names of the per-user metrics, in the order they are reported for each k.
PER_USER_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "hit_rate")

# Users are processed in blocks of about this many (user, rank) cells to bound temporary memory.
_BLOCK_CELLS = 1 << 20


def per_user_metrics(
    top_items: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int | Sequence[int] = 10
) -> dict[str, np.ndarray]:
    """Per-user ``precision@k``, ``recall@k``, ``ndcg@k``, ``map@k`` and ``hit_rate@k`` arrays.

    Each value is a float array of length ``n_users``; users with no relevant item get NaN.
    ``k`` is one cutoff or a sequence of cutoffs, each between 1 and ``top_items.shape[1]``.
    """
    return _per_user(*_validate(top_items, relevant, k))


def list_ndcg(hits: np.ndarray, n_relevant: int) -> float:
    """Binary NDCG of one ranked list: `hits` (1/0 per position, best first) against `n_relevant` relevant
    items, the ideal list holding min(n_relevant, len(hits)) of them (what ``ndcg@k`` computes per user).

    >>> round(list_ndcg(np.array([0.0, 1.0]), 1), 4)
    0.6309
    """
    if not n_relevant or not len(hits):
        return 0.0
    discount = 1.0 / np.log2(np.arange(2, len(hits) + 2))
    return float(np.asarray(hits, np.float64) @ discount / discount[:min(n_relevant, len(hits))].sum())


def _per_user(top: np.ndarray, rel: sp.csr_matrix, ks: list[int]) -> dict[str, np.ndarray]:
    """``per_user_metrics`` on validated inputs (canonical CSR, sorted unique ks)."""
    n_users = top.shape[0]
    k_max = ks[-1]
    n_rel = np.diff(rel.indptr)

    # Discounts and ideal DCG prefix sums are shared by every user.
    discount = 1.0 / np.log2(np.arange(k_max) + 2.0)
    ideal_dcg = np.cumsum(discount)
    rank = np.arange(1, k_max + 1, dtype=np.float64)

    out = {f"{name}@{kk}": np.full(n_users, np.nan) for kk in ks for name in PER_USER_METRICS}
    block = max(1, _BLOCK_CELLS // k_max)
    for start in range(0, n_users, block):
        rows = slice(start, min(start + block, n_users))
        hits = _hit_matrix(top[rows, :k_max], rel, start)
        n_rel_b = n_rel[rows]
        evaluated = n_rel_b > 0
        cum_hits = np.cumsum(hits, axis=1, dtype=np.float64)
        cum_dcg = np.cumsum(hits * discount, axis=1)
        cum_ap = np.cumsum(hits * (cum_hits / rank), axis=1)
        for kk in ks:
            n_hits = cum_hits[:, kk - 1]
            denom = np.minimum(kk, n_rel_b)  # min(K, R), 0 only for skipped users
            safe = np.maximum(denom, 1)
            values = {
                "precision": n_hits / kk,
                "recall": n_hits / safe,
                "ndcg": cum_dcg[:, kk - 1] / ideal_dcg[safe - 1],
                "map": cum_ap[:, kk - 1] / safe,
                "hit_rate": (n_hits > 0).astype(np.float64),
            }
            for name, value in values.items():
                out[f"{name}@{kk}"][rows] = np.where(evaluated, value, np.nan)
    return out


def ranking_metrics(
    top_items: np.ndarray,
    relevant: sp.spmatrix | sp.sparray,
    k: int | Sequence[int] = 10,
    n_items: int | None = None,
) -> dict[str, float]:
    """Metrics averaged over users with at least one relevant item, for each cutoff in ``k``.

    Returns ``precision@k``, ``recall@k``, ``ndcg@k``, ``map@k``, ``hit_rate@k`` and
    ``coverage@k`` for each k, plus ``users`` (the number of users evaluated). Averages are NaN
    when no user has a relevant item. ``n_items`` (the catalogue size used by coverage) defaults
    to ``relevant.shape[1]``.
    """
    top, rel, ks = _validate(top_items, relevant, k)
    n_cols = rel.shape[1]
    if n_items is None:
        n_items = n_cols
    elif isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < n_cols:
        raise ValueError(
            f"n_items={n_items!r} must be an integer >= relevant.shape[1]={n_cols}; "
            "pass the catalogue size or leave n_items=None"
        )

    per_user = _per_user(top, rel, ks)
    evaluated = np.diff(rel.indptr) > 0
    n_eval = int(evaluated.sum())
    top_eval = top[evaluated]

    result: dict[str, float] = {}
    for kk in ks:
        for name in PER_USER_METRICS:
            values = per_user[f"{name}@{kk}"][evaluated]
            result[f"{name}@{kk}"] = float(values.mean()) if n_eval else float("nan")
        items = top_eval[:, :kk].ravel()
        seen = np.zeros(n_cols, dtype=bool)
        seen[items[items >= 0]] = True
        result[f"coverage@{kk}"] = float(seen.sum()) / n_items if n_items else float("nan")
    result["users"] = n_eval
    return result


def _validate(
    top_items: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int | Sequence[int]
) -> tuple[np.ndarray, sp.csr_matrix, list[int]]:
    """Check the inputs; return ``top_items`` as an array, canonical CSR and sorted unique ks."""
    top = np.asarray(top_items)
    if top.ndim != 2 or not np.issubdtype(top.dtype, np.integer):
        raise ValueError(
            f"top_items must be a 2-D integer array of shape (n_users, K), got dtype {top.dtype} "
            f"and shape {top.shape}; pad short rows with -1"
        )
    if not sp.issparse(relevant):
        raise TypeError(
            f"relevant must be a scipy.sparse matrix, got {type(relevant).__name__}; "
            "wrap it with scipy.sparse.csr_matrix(...)"
        )
    if relevant.ndim != 2 or relevant.shape[0] != top.shape[0]:
        raise ValueError(
            f"top_items has {top.shape[0]} rows but relevant has shape {relevant.shape}; "
            "both need one row per evaluated user, in the same order"
        )
    n_cols = relevant.shape[1]
    if top.size and (top.min() < -1 or top.max() >= n_cols):
        raise ValueError(
            f"top_items holds item indices in [{top.min()}, {top.max()}] but they must lie in "
            f"[0, {n_cols - 1}] (relevant.shape[1]={n_cols}), or be -1 for padding"
        )

    ks_in = list(k) if isinstance(k, (Sequence, np.ndarray)) and not isinstance(k, str) else [k]
    width = top.shape[1]
    for kk in ks_in:
        if isinstance(kk, bool) or not isinstance(kk, (int, np.integer)) or not 1 <= kk <= width:
            raise ValueError(
                f"k={kk!r} must be an integer between 1 and top_items.shape[1]={width}; "
                f"lower k or recommend at least {kk} items per user"
            )
    if not ks_in:
        raise ValueError("k is an empty sequence; pass at least one cutoff, e.g. k=10")
    ks = sorted({int(kk) for kk in ks_in})

    head = np.sort(top[:, : ks[-1]], axis=1)
    dup = (head[:, 1:] == head[:, :-1]) & (head[:, 1:] >= 0)
    if dup.any():
        row = int(np.flatnonzero(dup.any(axis=1))[0])
        raise ValueError(
            f"top_items row {row} lists an item more than once in its top {ks[-1]}; "
            "each ranking must hold distinct items (pad with -1 instead of repeating)"
        )

    rel = sp.csr_matrix(relevant)  # a copy only when not CSR already
    if not rel.has_canonical_format or (rel.data == 0).any():
        rel = rel.copy()
        rel.sum_duplicates()
        rel.eliminate_zeros()
    return top, rel, ks


def _hit_matrix(top: np.ndarray, rel: sp.csr_matrix, row_offset: int) -> np.ndarray:
    """Boolean ``(len(top), K)`` matrix: is ``top[u, j]`` stored in row ``row_offset + u`` of ``rel``.

    Every stored entry of the block's rows gets the key ``local_row * n_cols + col``; canonical
    CSR makes these keys sorted, so one ``searchsorted`` answers all lookups at once.
    """
    n_rows, width = top.shape
    n_cols = rel.shape[1]
    lo, hi = rel.indptr[row_offset], rel.indptr[row_offset + n_rows]
    if hi == lo:
        return np.zeros((n_rows, width), dtype=bool)
    counts = np.diff(rel.indptr[row_offset : row_offset + n_rows + 1])
    keys = np.repeat(np.arange(n_rows, dtype=np.int64), counts) * n_cols + rel.indices[lo:hi]
    queries = np.arange(n_rows, dtype=np.int64)[:, None] * n_cols + top
    pos = np.minimum(np.searchsorted(keys, queries), keys.size - 1)
    return (keys[pos] == queries) & (top >= 0)


# ------------------------------------------------------------------------------------- beyond accuracy
def beyond_accuracy(top_items: np.ndarray, popularity: np.ndarray, k: int | Sequence[int] = 10,
                    item_vectors: np.ndarray | None = None, n_users: int | None = None,
                    head_share: float = 0.8) -> dict[str, float]:
    """What the lists are made of, whatever the users then did: novelty, diversity, long tail, popularity.

    Parameters
    ----------
    top_items : (n_users, K) int array, -1 padded (as in `ranking_metrics`)
    popularity : (n_items,) training interactions (or users) per item
    k : cutoff(s), each <= K
    item_vectors : (n_items, d), optional; with them, intra-list diversity
    n_users : the number of training users (default: ``popularity.max()``, a lower bound)
    head_share : the head is the fewest most popular items that hold this share of all interactions; the
        rest is the long tail

    Returns, per k (means over users with at least one recommended item):

    * ``novelty@k``: mean self-information ``-log2(p_i)`` of the recommended items, ``p_i`` = item i's share
      of users (at least one), in bits: higher recommends what fewer users know;
    * ``diversity@k``: intra-list diversity, the mean ``1 - cos(v_i, v_j)`` over the list's pairs;
    * ``long_tail@k``: share of recommended items outside the head;
    * ``arp@k``: average recommended popularity, the mean popularity of the recommended items.

    >>> top = np.array([[0, 1], [0, 2]])
    >>> m = beyond_accuracy(top, np.array([8.0, 1.0, 1.0]), 2, item_vectors=np.eye(3), n_users=8)
    >>> m["novelty@2"], m["diversity@2"], m["long_tail@2"], m["arp@2"]
    (1.5, 1.0, 0.5, 4.5)
    """
    top = np.asarray(top_items)
    popularity = np.asarray(popularity, np.float64)
    ks = sorted({int(k)} if isinstance(k, (int, np.integer)) else {int(x) for x in k})
    if top.ndim != 2 or not ks or ks[0] < 1 or ks[-1] > top.shape[1]:
        raise ValueError(f"k must be between 1 and top_items.shape[1]={top.shape[1]}. Got {k!r}.")
    n_users = float(n_users if n_users is not None else max(popularity.max(initial=0.0), 1.0))
    self_info = -np.log2(np.maximum(popularity, 1.0) / n_users)
    tail = _long_tail(popularity, head_share)
    unit = None
    if item_vectors is not None:
        unit = normalise(np.asarray(item_vectors, np.float32))
    out: dict[str, float] = {}
    for kk in ks:
        idx = top[:, :kk]
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        out[f"novelty@{kk}"] = _list_mean(self_info[safe], valid)
        out[f"long_tail@{kk}"] = _list_mean(tail[safe].astype(np.float64), valid)
        out[f"arp@{kk}"] = _list_mean(popularity[safe], valid)
        if unit is not None:
            out[f"diversity@{kk}"] = _intra_list_diversity(unit, safe, valid)
    return out


def _intra_list_diversity(unit: np.ndarray, idx: np.ndarray, valid: np.ndarray) -> float:
    """Mean over lists of two or more items of the mean 1 - cos over their pairs; users in blocks so that the
    gathered vectors stay within _BLOCK_CELLS * 16 floats (item-item models have catalogue-wide vectors)."""
    block = max(1, (_BLOCK_CELLS * 16) // max(1, idx.shape[1] * unit.shape[1]))
    total, count = 0.0, 0
    for start in range(0, len(idx), block):
        rows = slice(start, start + block)
        v = unit[idx[rows]] * valid[rows, :, None]
        summed = (v.sum(axis=1, dtype=np.float64) ** 2).sum(axis=1)  # |sum v|^2: every ordered pair's cos
        n = valid[rows].sum(axis=1)
        pairs = n * (n - 1)
        two = pairs > 0
        total += float((1.0 - (summed[two] - n[two]) / pairs[two]).sum())  # the diagonal (n ones) left out
        count += int(two.sum())
    return total / count if count else float("nan")


def _list_mean(values: np.ndarray, valid: np.ndarray) -> float:
    """Mean over users (with at least one item) of the mean of `values` over their list's valid slots."""
    n = valid.sum(axis=1)
    users = n > 0
    per_user = np.where(valid, values, 0.0).sum(axis=1)[users] / n[users]
    return float(per_user.mean()) if users.any() else float("nan")


def _long_tail(popularity: np.ndarray, head_share: float) -> np.ndarray:
    """True for items outside the head: the fewest most popular items holding `head_share` of interactions."""
    if not 0 < head_share < 1:
        raise ValueError(f"head_share must be between 0 and 1 (exclusive). Got {head_share!r}.")
    order = np.argsort(-popularity, kind="stable")
    cumulative = np.cumsum(popularity[order])
    n_head = int(np.searchsorted(cumulative, head_share * cumulative[-1])) + 1 if len(order) and \
        cumulative[-1] > 0 else 0
    tail = np.ones(len(popularity), bool)
    tail[order[:n_head]] = False
    return tail
