"""Reference item-item baselines for evaluation: EASE (Steck 2019) and cosine item-KNN.

Both score a user as a weighted sum over the items in their history, score(u, i) = sum_j x_uj W[j, i], and are
exported like every other model, so they rank through the same Engine and evaluator as the embedding models.
Item-KNN (and EASE in its dense form) export the columns of W as item vectors (n_items dims) and a user's binary
history row as their user vector (fold-in 'indicator'), at a cost of n_items^2 floats. EASE picks a form by
what fits its memory bound (`choose_form`, `memory_bytes`): dense, the Woodbury identity on users for catalogues
wider than the user base, or dense on the most popular items. Meant for offline comparison, not for serving.
"""
from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from ..data import Interactions
from ..exceptions import DataValidationError
from ..foldin import FoldIn
from ..params import Float, Int, Interval, Options
from .base import Exported, Recommender

log = logging.getLogger("recsys")
MAX_DENSE_BYTES = 6 * 2**30  # EASE's default memory bound (max_bytes=None) and item-KNN's limit
EASE_FORMS = ("dense", "woodbury", "head")
FORM_CHOICES = ("auto", *EASE_FORMS)  # what EASE(form=...) accepts: auto picks by memory (choose_form)
WORK_BYTES = 2**26  # scratch of one chunk of a sparse product or triangle copy (counted in memory_bytes)
MIN_HEAD_ITEMS = 2  # a head of one item has only the zero weight (an item never recommends itself)


def _chunk_rows(n_rows: int, width: int) -> int:
    """Rows per chunk of a product `width` wide: 16 bytes an entry (a sparse product's index and float64
    value, or a float64 dense block) within WORK_BYTES, at least one row."""
    return max(1, min(n_rows, WORK_BYTES // max(1, 16 * width)))


def _scratch(n_rows: int, width: int) -> int:
    return 16 * width * _chunk_rows(n_rows, width)


def memory_bytes(n_users: int, n_items: int, form: str, head_items: int | None = None) -> int:
    """Bytes of the dense arrays EASE holds at its peak in `form`: the fit's matrices, the exported vectors and
    the Engine's normalised copies that `fit` builds (float32 = 4 bytes, float64 = 8; u users, n items):

    dense:    max(4 n^2 + s(n, n), 12 n^2 + 4 u n, 8 n^2 + 12 u n)   weights n x n, histories u x n
    woodbury: max(12 u^2 + 4 n u + s(max(n, u), u), 16 n u + 4 u^2, 12 n u + 12 u^2)   K^-1 in float64 u x u, then
              item vectors and projection n x u, user vectors u x u
    head:     max(4 h^2 + 4 n h + s(h, h), 16 n h + 4 u h, 12 n h + 12 u h)   dense EASE on h = head_items,
              item vectors and projection n x h (zero rows for the tail), user vectors u x h

    s(r, w) = 16 w min(r, max(1, WORK_BYTES // (16 w))): one chunk's scratch. The last two terms of each are
    the Engine's normalised copies for cosine similar_items / similar_users (two transient copies each while
    it normalises). Not counted: the sparse log itself (about 12 bytes a non-zero, a few copies) and what
    serving builds lazily (the Engine's int8 copy of the item vectors, score blocks).
    """
    u, n = int(n_users), int(n_items)
    if form == "dense":
        return max(4 * n * n + _scratch(n, n), 12 * n * n + 4 * u * n, 8 * n * n + 12 * u * n)
    if form == "woodbury":
        return max(12 * u * u + 4 * n * u + _scratch(max(n, u), u), 16 * n * u + 4 * u * u,
                   12 * n * u + 12 * u * u)
    if form == "head":
        if isinstance(head_items, bool) or not isinstance(head_items, (int, np.integer)) or \
                not 1 <= head_items <= n:
            raise DataValidationError(f"memory_bytes(form='head') needs 'head_items', an int from 1 to n_items "
                                      f"({n:,}). Got {head_items!r}.")
        h = int(head_items)
        return max(4 * h * h + 4 * n * h + _scratch(h, h), 16 * n * h + 4 * u * h, 12 * n * h + 12 * u * h)
    raise DataValidationError(f"The 'form' argument of memory_bytes must be one of {', '.join(map(repr, EASE_FORMS))}"
                              f". Got {form!r}.")


def choose_form(n_users: int, n_items: int, max_bytes: int | None = None, form: str = "auto"
                ) -> tuple[str, int, int]:
    """(form, items modelled, bytes needed) of EASE within `max_bytes` (None: MAX_DENSE_BYTES). form 'auto': of
    'dense' and (with fewer users than items) 'woodbury', the one that needs less memory, when it fits (Woodbury's
    inverse is users^3 against dense's items^3, so the smaller form is also the faster one: 610 x 9,724 needs
    0.09 GiB against 1.08 GiB); else 'head', the most popular items that fit (at least MIN_HEAD_ITEMS; when even
    those do not fit, the bytes returned exceed the bound and EASE.fit refuses). A named form is that form (the
    largest head within the bound for 'head'), its bytes possibly over the bound."""
    if form not in FORM_CHOICES:
        raise DataValidationError(f"The EASE form must be one of {FORM_CHOICES}. Got {form!r}.")
    bound = MAX_DENSE_BYTES if max_bytes is None else max_bytes
    if form != "head":
        named = [form] if form != "auto" else ["dense", "woodbury"] if n_users < n_items else ["dense"]
        best, need = min(((f, memory_bytes(n_users, n_items, f)) for f in named), key=lambda f: f[1])
        if need <= bound or form != "auto":
            return best, n_items, need
    low, high = MIN_HEAD_ITEMS, n_items - 1  # the largest head that fits: memory_bytes grows with head_items
    if high < low or memory_bytes(n_users, n_items, "head", low) > bound:
        h = min(MIN_HEAD_ITEMS, n_items)
        return "head", h, memory_bytes(n_users, n_items, "head", h)
    while low < high:
        mid = (low + high + 1) // 2
        if memory_bytes(n_users, n_items, "head", mid) <= bound:
            low = mid
        else:
            high = mid - 1
    return "head", low, memory_bytes(n_users, n_items, "head", low)


def dense_bytes(n_users: int, n_items: int) -> int:
    """What EASE's dense form needs at its peak, `memory_bytes(n_users, n_items, 'dense')` (the figure callers
    compared with MAX_DENSE_BYTES before EASE had other forms). Past the bound EASE falls back to the Woodbury
    and head forms: `ease_bytes` is what it will actually need."""
    return memory_bytes(n_users, n_items, "dense")


def ease_bytes(n_users: int, n_items: int, max_bytes: int | None = None) -> int:
    """What EASE(max_bytes=max_bytes) needs at its peak in the form it chooses (`choose_form`): over the bound
    (None: MAX_DENSE_BYTES) only when no form fits, and EASE refuses the log."""
    return choose_form(n_users, n_items, max_bytes)[2]


def _knn_bytes(n_users: int, n_items: int) -> int:
    """What item-KNN holds at its peak: three n_items x n_items float32 matrices (co-occurrence, similarities,
    neighbour cut) and the dense n_users x n_items histories it exports as user vectors."""
    return 4 * (3 * n_items * n_items + n_users * n_items)


def _check_size(model: Recommender, train: Interactions) -> None:
    need = _knn_bytes(train.n_users, train.n_items)
    if need > MAX_DENSE_BYTES:
        raise DataValidationError(
            f"{type(model).__name__} keeps dense n_items x n_items matrices: {train.n_items:,} items and "
            f"{train.n_users:,} users need about {need / 2**30:.1f} GiB, over its limit of "
            f"{MAX_DENSE_BYTES / 2**30:.0f} GiB (recsys.models.baselines.MAX_DENSE_BYTES). Use an embedding "
            "model for this catalogue: ials (the default), mf or two_tower.")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _export(weights: np.ndarray, history: sp.csr_matrix, extra: dict) -> Exported:
    """item vector i = column i of the item-item weights; user vector = binary history row."""
    return Exported(item_vectors=np.ascontiguousarray(weights.T, dtype=np.float32),
                    user_vectors=history.toarray().astype(np.float32), foldin=FoldIn("indicator"),
                    similarity="cosine", extra=extra)


def _dense_product(a: sp.csr_matrix, b: sp.csr_matrix, dtype: type) -> np.ndarray:
    """a @ b as a dense array, a chunk of a's rows at a time: the sparse product of a whole wide matrix can
    hold far more than the dense result."""
    out = np.zeros((a.shape[0], b.shape[1]), dtype)
    step = _chunk_rows(a.shape[0], b.shape[1])
    for start in range(0, a.shape[0], step):
        (a[start:start + step] @ b).astype(dtype, copy=False).toarray(out=out[start:start + step])
    return out


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite C-contiguous matrix in its own memory (LAPACK potrf + potri on
    its transpose, a Fortran view, then the triangle copied over a block of rows at a time): about 2.5x faster
    than a general inverse and no second n x n array. float32 is accurate enough for the dense form (l2 > 0
    bounds the condition); the Woodbury form inverts in float64."""
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    factor, info = potrf(a.T, lower=False, overwrite_a=True, clean=False)
    inv = factor
    if info == 0:
        inv, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:  # pragma: no cover - l2 > 0 keeps the matrix positive definite
        raise DataValidationError(f"EASE: the regularised Gram matrix is not positive definite (LAPACK info {info}); "
                                  "raise 'l2'.")
    if not np.shares_memory(inv, a):  # pragma: no cover - LAPACK wrote a copy after all
        a[...] = inv.T
    n, step = len(a), _chunk_rows(len(a), len(a))  # the lower triangle (C order) holds the inverse
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = a[start:stop, start:stop]
        block[...] = np.tril(block) + np.tril(block, -1).T
        a[start:stop, stop:] = a[stop:, start:stop].T
    return a


def _ease_weights(x: sp.csr_matrix, l2: float) -> np.ndarray:
    """The dense closed form's item vectors, float32 n x n in one array: row i = column i of
    B = I - P diag(1/diag P), P = (X^T X + l2 I)^-1, that is -P[i] / P_ii (P is symmetric), 0 on the diagonal."""
    x32 = x.astype(np.float32)
    p = _dense_product(x32.T.tocsr(), x32, np.float32)
    p[np.diag_indices_from(p)] += l2
    p = _spd_inverse(p)
    p /= -np.diag(p).copy()[:, None]
    np.fill_diagonal(p, 0.0)
    return p


class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder: B = argmin |X - XB|^2 + l2 |B|^2 subject to diag(B) = 0.

    Closed form: P = (X^T X + l2 I)^-1, B = I - P diag(1/diag P); score(u, i) = (x_u B)_i. X is the binary
    users x items history. `fit` picks the smallest form (`form` 'auto') that fits `max_bytes` (None: MAX_DENSE_BYTES, read at fit time;
    `choose_form`, `memory_bytes` give the figures), records it in `form_` and the bundle's training facts:

    * 'dense' (when it fits and Woodbury does not need less): one n_items^3 inversion; item vectors are B's columns (n_items dims), user vectors
      the binary histories (fold-in 'indicator').
    * 'woodbury' (fewer users than items, the smaller form then): with K = X X^T + l2 I (users x users), P = (I - X^T K^-1 X) / l2, so
      for an item i outside u's history s_ui = -(x_u P)_i / P_ii = (x_u X^T K^-1 x_i) / (l2 P_ii), where
      l2 P_ii = 1 - x_i^T K^-1 x_i. Exported in n_users dims: user vector x_u X^T K^-1 (= I - l2 K^-1 for a
      training user), item vector x_i / (l2 P_ii), fold-in 'linear' with projection X^T K^-1 (n_items x
      n_users), whose rows summed over a history give that user vector. One n_users^3 inversion. Scores on the
      user's own history items exceed dense EASE's by 1/(l2 P_ii) - 1 >= 0 (the diag(B) = 0 constraint is not
      applied to them); recommending excludes those items, so rankings agree. similar_items compares items'
      scaled user columns (cosine of co-occurrence), not B's columns.
    * 'head' (neither fits): dense EASE on the most popular items that fit the bound (the 'head', by number
      of users, ties to the lower index), exported in head-size dims: the other items get zero item vectors
      (score 0: never recommended above a positively scored item; similarity 0), user vectors are the histories
      restricted to the head, fold-in 'linear' with a 0/1 projection mapping each head item to its own
      dimension and each tail item to a zero row. Scores on head items equal dense EASE fitted on the head's
      columns alone.

    Woodbury inside the head would not help: its vectors are n_users wide for every item, the size of the full
    Woodbury form. The head is small because every item keeps a head-wide row (item vectors, projection and the
    Engine's copies, 16 n_items bytes per head item at the peak): within the default 6 GiB, 3,764 of Ciao's
    105,114 items (7,375 users, Woodbury needs 11.8 GiB) and 1,335 of 296,000 items with 22,000 users. A log
    where even a head of MIN_HEAD_ITEMS does not fit is refused with the figures.
    """

    name: ClassVar[str] = "ease"
    _parameter_constraints: ClassVar[dict] = {"l2": Interval(float, 0, closed_low=False),
                                              "max_bytes": Interval(int, 1, none_ok=True),
                                              "form": Options(FORM_CHOICES)}
    search_space: ClassVar[dict] = {"l2": Float(1.0, 1e5, log=True)}
    start_points: ClassVar[tuple] = ({"l2": 50.0}, {"l2": 5000.0})  # a decade either side of the default

    def __init__(self, *, l2: float = 500.0, max_bytes: int | None = None, form: str = "auto"):
        self.l2 = l2
        self.max_bytes = max_bytes
        self.form = form

    @property
    def form_(self) -> str:
        """The form the model was fitted in: 'dense', 'woodbury' or 'head' (see the class docstring)."""
        self._check_fitted()
        return self.exported_.extra.get("form", "dense")

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        bound = MAX_DENSE_BYTES if self.max_bytes is None else int(self.max_bytes)
        n_users, n_items = train.n_users, train.n_items
        form, n_model, need = choose_form(n_users, n_items, bound, self.form)
        if need > bound:
            dense = memory_bytes(n_users, n_items, "dense")
            wood = (_size(memory_bytes(n_users, n_items, "woodbury")) if n_users < n_items
                    else "only for fewer users than items")
            raise DataValidationError(
                f"EASE keeps dense matrices that do not fit {n_items:,} items and {n_users:,} users within "
                f"max_bytes={bound:,} ({_size(bound)}"
                f"{'' if self.max_bytes is not None else ', the default recsys.models.baselines.MAX_DENSE_BYTES'}"
                f"): dense needs {_size(dense)}, woodbury {wood}, and even its smallest form, the {n_model} most "
                f"popular items (form 'head'), needs {_size(need)} (recsys.models.baselines.memory_bytes). Raise "
                f"'max_bytes' to at least {need:,}, or use an embedding model for this catalogue: ials (the "
                "default), mf or two_tower.")
        log.info("EASE: %s form (%s of %s items), about %s of dense arrays within max_bytes %s", form,
                 f"{n_model:,}", f"{n_items:,}", _size(need), _size(bound))
        x = train.matrix(binary=True)
        x.data[:] = 1.0
        extra = {"form": form, "memory_bytes": int(need), "max_bytes": int(bound)}
        if form == "dense":
            weights = _ease_weights(x, float(self.l2))
            return Exported(weights, x.toarray(), foldin=FoldIn("indicator"), similarity="cosine", extra=extra)
        if form == "woodbury":
            return self._woodbury(x, extra)
        return self._head(x, n_model, extra)

    def _woodbury(self, x: sp.csr_matrix, extra: dict) -> Exported:
        l2 = float(self.l2)
        n_users, n_items = x.shape
        x64 = x.astype(np.float64)
        xt = x64.T.tocsr()  # items x users: row i is x_i
        kinv = _dense_product(x64, xt, np.float64)  # X X^T
        kinv[np.diag_indices_from(kinv)] += l2
        kinv = _spd_inverse(kinv)  # K^-1
        projection = np.empty((n_items, n_users), np.float32)  # X^T K^-1, row i = x_i^T K^-1
        lp = np.empty(n_items)  # l2 P_ii = 1 - x_i^T K^-1 x_i, read off the same rows
        step = _chunk_rows(n_items, n_users)
        for start in range(0, n_items, step):
            part = xt[start:start + step]
            block = np.asarray(part @ kinv)
            projection[start:start + len(block)] = block
            rows = np.repeat(np.arange(len(block)), np.diff(part.indptr))
            lp[start:start + len(block)] = 1.0 - np.bincount(rows, weights=block[rows, part.indices],
                                                             minlength=len(block))
        if not np.all(lp > 0):  # pragma: no cover - l2 P_ii is in (0, 1] in exact arithmetic
            raise DataValidationError(f"EASE (woodbury form): l2 P_ii = {lp.min():.3g} for some item, numerically "
                                      f"singular at l2={l2}; raise 'l2'.")
        users = np.empty((n_users, n_users), np.float32)  # X X^T K^-1 = I - l2 K^-1
        step = _chunk_rows(n_users, n_users)
        for start in range(0, n_users, step):
            block = kinv[start:start + step] * -l2
            block[np.arange(len(block)), np.arange(start, start + len(block))] += 1.0
            users[start:start + len(block)] = block
        del kinv, block
        items = np.zeros((n_items, n_users), np.float32)  # x_i / (l2 P_ii)
        (sp.diags(1.0 / lp) @ xt).astype(np.float32).toarray(out=items)
        return Exported(items, users, foldin=FoldIn("linear"), similarity="cosine", extra=extra,
                        projection=projection)

    def _head(self, x: sp.csr_matrix, n_head: int, extra: dict) -> Exported:
        n_items = x.shape[1]
        counts = np.bincount(x.indices, minlength=n_items)
        head = np.sort(np.argsort(-counts, kind="stable")[:n_head])
        x_head = x[:, head].tocsr()
        weights = _ease_weights(x_head, float(self.l2))
        items = np.zeros((n_items, n_head), np.float32)
        items[head] = weights
        del weights
        projection = np.zeros((n_items, n_head), np.float32)
        projection[head, np.arange(n_head)] = 1.0
        extra.update(head_items=int(n_head), head_interactions=float(counts[head].sum() / max(counts.sum(), 1)))
        return Exported(items, x_head.toarray(), foldin=FoldIn("linear"), similarity="cosine", extra=extra,
                        projection=projection)


class ItemKNN(Recommender):
    """Cosine item-item neighbourhood: each history item votes for its `neighbours` most similar items.

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink) over binary interactions.
    """

    name: ClassVar[str] = "itemknn"
    _parameter_constraints: ClassVar[dict] = {"neighbours": Interval(int, 1), "shrink": Interval(float, 0)}
    search_space: ClassVar[dict] = {"neighbours": Int(5, 2000, log=True), "shrink": Float(0.0, 200.0, limits=("low",))}

    def __init__(self, *, neighbours: int = 100, shrink: float = 0.0):
        self.neighbours = neighbours
        self.shrink = shrink

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        _check_size(self, train)
        x = train.matrix(binary=True)
        counts = np.asarray(x.sum(axis=0)).ravel()
        norms = np.sqrt(counts)
        sim = (x.T @ x).toarray().astype(np.float32)
        sim /= np.outer(norms, norms) + self.shrink + 1e-12
        np.fill_diagonal(sim, 0.0)
        k = min(self.neighbours, train.n_items - 1)
        if k < train.n_items - 1:  # keep each item's k strongest neighbours (row j: whom item j votes for)
            drop = np.argpartition(-sim, k, axis=1)[:, k:]
            np.put_along_axis(sim, drop, 0.0, axis=1)
        return _export(sim, x, {})
