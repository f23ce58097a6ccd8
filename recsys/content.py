"""Item vectors from content, and how they meet learned ones (numpy, pandas, scikit-learn; torch only behind
`text_vectors(encoder="minilm")`).

Content vectors come from an item's text and tags (`content_vectors`: TF-IDF, then TruncatedSVD; `text_vectors`
also offers a pretrained sentence encoder, all-MiniLM-L6-v2) or from any
external encoder, e.g. a sentence encoder (`read_item_vectors`: a dense column of a DataFrame or Parquet file,
or a `.npy` array; `write_item_vectors` writes that column). `cold_item_split` holds whole items out of
training; `map_to_learned` and `hybrid_vectors` carry content vectors into a model's learned space for the
items it never saw; `evaluate_item_vectors` scores any item vectors through `recsys.evaluate`, with each user
folded in from their training history over those vectors (`recsys.engine.Engine.fold_in`).

>>> meta = pd.DataFrame({"item": ["a", "b", "c"], "genres": [["Comedy"], ["Comedy"], ["Horror"]]})
>>> vectors = content_vectors(meta, columns=["genres"], dim=2)
>>> vectors.shape
(3, 2)
>>> bool(vectors[0] @ vectors[1] > vectors[0] @ vectors[2])
True
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from threadpoolctl import threadpool_limits

from .data import IdMap, Interactions, holdout, ids_as_str, is_missing
from .engine import Engine
from .evaluation import evaluate
from .exceptions import DataValidationError
from .foldin import FoldIn
from .retrieval import normalise

__all__ = ["DEFAULT_FOLDIN", "cold_item_split", "cold_start_table", "content_vectors", "evaluate_item_vectors", "fold_in_users",
           "hybrid_vectors", "map_to_learned", "read_item_vectors", "text_vectors", "warm_items",
           "write_item_vectors"]

log = logging.getLogger("recsys")

#: How `evaluate_item_vectors` folds a user in when not told otherwise: an iALS-style ridge solve (each history
#: item a target of 1, every other item a target of 0 with weight 0.1; measured best for content vectors on
#: MovieLens among mean, plain ridge and this).
DEFAULT_FOLDIN = FoldIn("ridge", reg=1.0, unobserved_weight=0.1, confidence="binary")

_WORD = re.compile(r"\w\w+")
_LIST_TYPES = (list, tuple, set, frozenset, np.ndarray)


# ------------------------------------------------------------------------------------- content vectors
def content_vectors(item_metadata: pd.DataFrame, columns: Sequence[str] = ("title", "genres", "tags"),
                    dim: int = 64, seed: int = 0) -> np.ndarray:
    """Item vectors from text and tags: TF-IDF over the columns' tokens, TruncatedSVD to `dim`, unit length.

    Parameters
    ----------
    item_metadata : pandas.DataFrame
        One row per item. For an `Interactions.item_metadata` the rows are in item index order, so row i of
        the result is the vector of item index i.
    columns : sequence of str
        The columns to read. A text value (a title) gives its words; a list value (genres, tags) gives each
        element as one token, so "Sci-Fi" or "dark comedy" stay whole. Tokens are prefixed by their column.
    dim : int
        The dimension. When the text has at most `dim` distinct tokens (or fewer than `dim` rows), the
        TF-IDF vectors are already that small: they are used as they are and padded with zero columns.
    seed : int
        Seeds TruncatedSVD's randomised solver.

    Returns
    -------
    numpy.ndarray
        (len(item_metadata), dim) float32, each row of unit length (a row without any text is zero).

    >>> meta = pd.DataFrame({"title": ["Alien", "Aliens", "Up"], "tags": [["space"], ["space"], []]})
    >>> content_vectors(meta, columns=["tags"], dim=3)
    array([[1., 0., 0.],
           [1., 0., 0.],
           [0., 0., 0.]], dtype=float32)
    """
    _check_dim(dim)
    _check_columns(item_metadata, columns)
    documents = [_tokens(columns, values) for values in zip(*(item_metadata[c] for c in columns))]
    empty = sum(not doc for doc in documents)
    if empty == len(documents):
        raise DataValidationError(f"Item metadata columns {list(columns)} hold no text or tags in any of the "
                                  f"{len(documents)} rows; pass columns= with the columns that describe items.")
    if empty:
        log.warning("content_vectors: %d of %d items have no text in %s; their vectors are zero.", empty,
                    len(documents), list(columns))
    tfidf = TfidfVectorizer(analyzer=_identity, lowercase=False, sublinear_tf=True).fit_transform(documents)
    n_rows, n_terms = tfidf.shape
    if n_terms <= dim or n_rows <= dim:
        reduced = tfidf.toarray() if n_terms <= dim else _svd(tfidf, n_rows, seed)
        log.info("content_vectors: %d distinct tokens over %d items give %d dimensions; the other %d of "
                 "dim=%d are zero.", n_terms, n_rows, reduced.shape[1], dim - reduced.shape[1], dim)
        reduced = np.pad(reduced, ((0, 0), (0, dim - reduced.shape[1])))
    else:
        reduced = _svd(tfidf, dim, seed)
    return normalise(reduced)


ENCODERS = ("tfidf", "minilm")


def text_vectors(item_metadata: pd.DataFrame, columns: Sequence[str] = ("title", "genres", "tags"),
                 encoder: str = "tfidf", dim: int = 64, seed: int = 0) -> np.ndarray:
    """Item vectors from their text columns, one row per row of `item_metadata`.

    encoder 'tfidf' (the default, no extra needed): `content_vectors` (TF-IDF over the columns' tokens,
    TruncatedSVD to `dim`). 'minilm': the pretrained sentence encoder all-MiniLM-L6-v2 (`recsys.encoders`, the
    `text` extra; 384 dimensions, `dim` and `seed` unused) over each item's columns written as one text,
    "title: Toy Story (1995). genres: Adventure, Animation. ...". Rows have unit length (no text: zero).
    """
    if encoder not in ENCODERS:
        raise DataValidationError(f"The 'encoder' parameter must be one of {ENCODERS}. Got {encoder!r}.")
    if encoder == "tfidf":
        return content_vectors(item_metadata, columns, dim, seed)
    from .encoders import encode_columns

    _check_columns(item_metadata, columns)
    return encode_columns(item_metadata, columns)


def _svd(matrix, n_components: int, seed: int) -> np.ndarray:
    return TruncatedSVD(n_components, random_state=seed).fit_transform(matrix)


def _identity(tokens: list[str]) -> list[str]:
    return tokens


def _tokens(columns: Sequence[str], values: Sequence[object]) -> list[str]:
    """One item's tokens: words of text values, whole elements of list values, each prefixed by its column."""
    out = []
    for column, value in zip(columns, values):
        if isinstance(value, _LIST_TYPES):
            words = (str(v).strip().lower() for v in value if not is_missing(v))
            out.extend(f"{column}:{w}" for w in words if w)
        elif not is_missing(value):
            out.extend(f"{column}:{w}" for w in _WORD.findall(str(value).lower()))
    return out


def _check_dim(dim: object) -> None:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise DataValidationError(f"The 'dim' parameter must be an int >= 1 (e.g. 64). Got {dim!r}.")


def _check_columns(item_metadata: pd.DataFrame, columns: Sequence[str]) -> None:
    if isinstance(columns, str):
        raise DataValidationError(f"The 'columns' parameter must be a list of column names. Got the string "
                                  f"{columns!r}; pass columns=[{columns!r}].")
    if not len(columns):
        raise DataValidationError("The 'columns' parameter is empty; pass the text columns to use, e.g. "
                                  "columns=['title', 'genres'].")
    for column in columns:
        if column not in item_metadata.columns:
            raise DataValidationError(f"Item metadata has no column {column!r}. Got columns "
                                      f"{list(item_metadata.columns)}; pass columns= with the text columns to use.")


# ------------------------------------------------------------------------------ vectors from elsewhere
def read_item_vectors(source: pd.DataFrame | str | Path, items: IdMap, *, item_col: str = "item",
                      vector_col: str = "vector", dim: int | None = None) -> np.ndarray:
    """Dense item vectors that any encoder produced, in the index order of `items`.

    Parameters
    ----------
    source : pandas.DataFrame, str or Path
        A DataFrame or Parquet file (.parquet, .pq) with an id column and a vector column holding one list
        or array of numbers per row; or a NumPy .npy file of shape (len(items), d) whose rows are already in
        the index order of `items`.
    items : IdMap
        The item map to align to (e.g. ``train.items``).
    item_col, vector_col : str
        The id column and the vector column (DataFrame and Parquet sources).
    dim : int, optional
        The dimension every vector must have (default: the length of most rows).

    Returns
    -------
    numpy.ndarray
        (len(items), d) float32. Items of `items` that the source lacks get zero vectors (a warning on the
        "recsys" logger counts them); rows of items not in `items` are ignored.

    Raises
    ------
    DataValidationError
        On a missing column, a repeated or empty id, or a bad row: a null, a vector of another length, a
        non-number or a non-finite value. The message names the item id and the column.

    >>> frame = pd.DataFrame({"item": ["b", "a"], "vector": [[0.0, 1.0], [1.0, 0.0]]})
    >>> read_item_vectors(frame, IdMap(["a", "b", "c"]))
    array([[1., 0.],
           [0., 1.],
           [0., 0.]], dtype=float32)
    """
    if dim is not None:
        _check_dim(dim)
    if not isinstance(source, pd.DataFrame) and Path(source).suffix.lower() == ".npy":
        return _read_npy(Path(source), items, dim)
    frame, where = _vector_frame(source)
    for role, column in (("item_col", item_col), ("vector_col", vector_col)):
        if column not in frame.columns:
            raise DataValidationError(f"Column {column!r} ({role}) not found in {where}. Available columns: "
                                      f"{list(frame.columns)}. Pass {role}=<column name>.")
    ids = _check_ids(ids_as_str(frame[item_col]).to_numpy(dtype=object), item_col, where)
    matrix = _stack_vectors(frame[vector_col].to_numpy(dtype=object), ids, vector_col, dim)
    rows = items.to_index(ids, missing="ignore")
    if (rows < 0).any():
        log.info("read_item_vectors: %d of %d rows of %s are items outside the item map; ignored.",
                 int((rows < 0).sum()), len(rows), where)
    out = np.zeros((len(items), matrix.shape[1]), np.float32)
    out[rows[rows >= 0]] = matrix[rows >= 0]
    _report_missing(items, rows[rows >= 0], where)
    return out


def write_item_vectors(path: str | Path, vectors: np.ndarray, items: IdMap, *, item_col: str = "item",
                       vector_col: str = "vector") -> Path:
    """Write item vectors as a Parquet file with an id column and a dense list column (`read_item_vectors`
    reads it back). Row i of `vectors` is item index i of `items`.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> items = IdMap(["a", "b"])
    >>> path = write_item_vectors(folder / "v.parquet", np.eye(2, dtype=np.float32), items)
    >>> read_item_vectors(path, items).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(items):
        raise DataValidationError(f"vectors has shape {vectors.shape}; it needs one row per item: "
                                  f"({len(items)}, d) for the {len(items)} items, in index order.")
    path = Path(path)
    frame = pd.DataFrame({item_col: items.ids.astype(str), vector_col: list(vectors)})
    frame.to_parquet(path, index=False)
    return path


def _vector_frame(source: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, str]:
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), "the DataFrame"
    path = Path(source)
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise DataValidationError(f"Cannot read item vectors from {str(path)!r}: unknown file type "
                                  f"{path.suffix!r}. Use a .parquet file with a list column, a .npy array of "
                                  "shape (n_items, d), or pass a pandas DataFrame.")
    if not path.exists():
        raise FileNotFoundError(f"Item vector file {str(path)!r} does not exist. Pass the path of a Parquet "
                                "or .npy file.")
    return pd.read_parquet(path), repr(path.name)


def _check_ids(ids: np.ndarray, item_col: str, where: str) -> np.ndarray:
    null = np.array([is_missing(x) or str(x).strip() == "" for x in ids], dtype=bool)
    if null.any():
        raise DataValidationError(f"Column {item_col!r} in {where} has a null or empty item id at row "
                                  f"{int(np.flatnonzero(null)[0])}; every vector needs the id of its item.")
    ids = np.array([str(x) for x in ids], dtype=object)
    counts = pd.Series(ids).value_counts(sort=False)
    if (counts > 1).any():
        repeated = counts[counts > 1]
        raise DataValidationError(f"Item {repeated.index[0]!r} appears {int(repeated.iloc[0])} times in column "
                                  f"{item_col!r} of {where}; give each item one vector.")
    return ids


def _stack_vectors(values: np.ndarray, ids: np.ndarray, column: str, dim: int | None) -> np.ndarray:
    """The rows as one (n, d) float64 matrix, after checking each row; errors name the item and the column."""
    if len(values) == 0:
        raise DataValidationError(f"Column {column!r} holds no vectors (the source has no rows).")
    lengths = np.array([_vector_length(v) for v in values])
    if (lengths < 0).any():
        row = int(np.flatnonzero(lengths < 0)[0])
        what = "no vector (null)" if is_missing(values[row]) else f"a {type(values[row]).__name__}"
        raise DataValidationError(f"Item {ids[row]!r} in column {column!r} has {what}; every row needs a "
                                  "list or 1-d array of numbers.")
    expected = dim if dim is not None else int(np.bincount(lengths).argmax())
    wrong = lengths != expected
    if wrong.any():
        row = int(np.flatnonzero(wrong)[0])
        basis = "" if dim is not None else " (the length of most rows)"
        raise DataValidationError(f"Item {ids[row]!r} in column {column!r} has {lengths[row]} values; every "
                                  f"vector needs {expected}{basis}. {int(wrong.sum())} row(s) in all.")
    try:
        matrix = np.array([np.asarray(v, dtype=np.float64) for v in values]).reshape(len(values), expected)
    except (TypeError, ValueError):
        row = next(r for r, v in enumerate(values) if not _numeric(v))
        raise DataValidationError(f"Item {ids[row]!r} in column {column!r} holds a value that is not a number; "
                                  "vectors must hold numbers only.") from None
    _check_finite(matrix, lambda r: f"Item {ids[r]!r} in column {column!r}")
    return matrix


def _vector_length(value: object) -> int:
    if isinstance(value, np.ndarray):
        return len(value) if value.ndim == 1 else -1
    return len(value) if isinstance(value, (list, tuple)) else -1


def _numeric(value: object) -> bool:
    try:
        np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _check_finite(matrix: np.ndarray, name_row) -> None:
    bad = ~np.isfinite(matrix)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        row, position = int(rows[0]), int(np.flatnonzero(bad[rows[0]])[0])
        raise DataValidationError(f"{name_row(row)} has a non-finite value ({matrix[row, position]}) at "
                                  f"position {position}; vectors must hold finite numbers. {len(rows)} row(s) "
                                  "in all.")


def _read_npy(path: Path, items: IdMap, dim: int | None) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"Item vector file {str(path)!r} does not exist. Pass the path of a Parquet "
                                "or .npy file.")
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or len(array) != len(items):
        raise DataValidationError(f"{path.name!r} holds an array of shape {array.shape}; item vectors in a .npy "
                                  f"file need shape ({len(items)}, d): one row per item, in the item map's "
                                  "index order.")
    if dim is not None and array.shape[1] != dim:
        raise DataValidationError(f"{path.name!r} holds vectors of {array.shape[1]} values; every vector needs "
                                  f"{dim} (dim={dim}).")
    if not np.issubdtype(array.dtype, np.number):
        raise DataValidationError(f"{path.name!r} holds {array.dtype} values; item vectors must be numbers.")
    _check_finite(array, lambda r: f"Item {items.ids[r]!r} (row {r} of {path.name!r})")
    return array.astype(np.float32)


def _report_missing(items: IdMap, found: np.ndarray, where: str) -> None:
    missing = np.setdiff1d(np.arange(len(items)), found)
    if len(missing):
        log.warning("read_item_vectors: %d of %d items have no vector in %s (e.g. %s); they get zero vectors.",
                    len(missing), len(items), where, list(items.ids[missing[:5]]))


# ----------------------------------------------------------------------------------- cold-start protocol
def cold_item_split(inter: Interactions, fraction: float = 0.1, seed: int = 0, *, test_fraction: float = 0.2
                    ) -> tuple[Interactions, Interactions, Interactions]:
    """A leakage-free item cold-start split: (train, warm_test, cold_test), sharing the id maps of `inter`.

    A random `fraction` (seeded) of the items with interactions becomes cold: every interaction with them
    leaves training and forms `cold_test`. The warm items' interactions are split per user by
    `recsys.data.holdout` (each user's latest `test_fraction`, or a random one in an untimed log) into
    `train` and `warm_test`. Every interaction lands in exactly one part. A user whose items are all cold
    has no training history (their fold-in is empty).

    >>> from recsys.data import from_arrays
    >>> log = from_arrays(np.repeat(["u1", "u2"], 5), np.array(list("abcdeabcfg")), timestamp=np.arange(10))
    >>> train, warm_test, cold_test = cold_item_split(log, fraction=0.3, seed=0)
    >>> train.nnz + warm_test.nnz + cold_test.nnz == log.nnz
    True
    >>> set(cold_test.item_index) & set(train.item_index)
    set()
    """
    if not 0 < fraction < 1:
        raise DataValidationError(f"The 'fraction' parameter must be a float in (0, 1), e.g. 0.1. Got {fraction}.")
    active = np.unique(inter.item_index)
    n_cold = round(fraction * len(active))
    if not 1 <= n_cold < len(active):
        raise DataValidationError(f"fraction={fraction} of the {len(active)} items with interactions makes "
                                  f"{n_cold} cold items; pick a fraction that leaves at least one cold and one "
                                  "warm item.")
    cold = np.random.default_rng(seed).choice(active, n_cold, replace=False)
    is_cold = np.isin(inter.item_index, cold)
    train, warm_test = holdout(inter.subset(~is_cold), test_fraction, seed=seed)
    cold_test = inter.subset(is_cold)
    log.info("cold_item_split: %d cold items (%d interactions), %d warm items; train %d, warm test %d.",
             n_cold, cold_test.nnz, len(active) - n_cold, train.nnz, warm_test.nnz)
    return train, warm_test, cold_test


def warm_items(train: Interactions) -> np.ndarray:
    """Boolean mask over the item index: True for items with at least one interaction in `train` (the items a
    model learned a vector for).

    >>> from recsys.data import from_arrays
    >>> warm_items(from_arrays(np.array(["u", "u"]), np.array(["a", "b"])).subset(np.array([True, False])))
    array([ True, False])
    """
    return np.bincount(train.item_index, minlength=train.n_items) > 0


# ------------------------------------------------------------------------- content meets learned vectors
def map_to_learned(content: np.ndarray, learned: np.ndarray, warm: np.ndarray, reg: float = 1.0) -> np.ndarray:
    """Content vectors carried into the learned space: a ridge regression (with intercept) from content to
    learned item vectors, fitted on the `warm` items (a boolean mask), applied to every item.

    >>> content = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    >>> learned = np.array([[2, 2], [-2, 0], [0, 0]], np.float32)
    >>> map_to_learned(content, learned, np.array([True, True, False]), reg=1e-6).round(3)
    array([[ 2.,  2.],
           [-2.,  0.],
           [ 2.,  2.]], dtype=float32)
    """
    content, learned, warm = _check_vector_pair(content, learned, warm)
    if not np.isfinite(reg) or reg < 0:
        raise DataValidationError(f"The 'reg' parameter must be a finite number >= 0 (e.g. 1.0). Got {reg!r}.")
    if warm.sum() < 2:
        raise DataValidationError(f"map_to_learned needs at least 2 warm items to fit on; the mask has "
                                  f"{int(warm.sum())}. Pass warm=warm_items(train).")
    ridge = Ridge(alpha=reg).fit(content[warm], learned[warm])
    return ridge.predict(content).astype(np.float32)


def hybrid_vectors(content: np.ndarray, learned: np.ndarray, warm: np.ndarray, reg: float = 1.0) -> np.ndarray:
    """Learned vectors for the `warm` items, content vectors mapped into the learned space
    (`map_to_learned`) for the others.

    >>> content = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    >>> learned = np.array([[2, 2], [-2, 0], [0, 0]], np.float32)
    >>> hybrid_vectors(content, learned, np.array([True, True, False]), reg=1e-6).round(3)
    array([[ 2.,  2.],
           [-2.,  0.],
           [ 2.,  2.]], dtype=float32)
    """
    content, learned, warm = _check_vector_pair(content, learned, warm)
    return np.where(warm[:, None], learned, map_to_learned(content, learned, warm, reg)).astype(np.float32)


def _check_vector_pair(content: np.ndarray, learned: np.ndarray, warm: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    content = np.asarray(content, dtype=np.float32)
    learned = np.asarray(learned, dtype=np.float32)
    warm = np.asarray(warm)
    if content.ndim != 2 or learned.ndim != 2 or len(content) != len(learned):
        raise DataValidationError(f"content {content.shape} and learned {learned.shape} vectors need one row "
                                  "per item each, in the same item order: shapes (n_items, d1) and (n_items, d2).")
    if warm.dtype != bool or warm.shape != (len(content),):
        raise DataValidationError(f"warm must be a boolean mask of shape ({len(content)},) over the items; got "
                                  f"dtype {warm.dtype}, shape {warm.shape}. Use warm_items(train).")
    return content, learned, warm


# ---------------------------------------------------------------------------------------------- scoring
def fold_in_users(item_vectors: np.ndarray, train: Interactions, foldin: FoldIn | dict | None = None
                  ) -> np.ndarray:
    """Each user's vector folded in from their training history over `item_vectors` (`Engine.fold_in`, with
    the training weights); users without history get zeros. Returns (train.n_users, d) float32.

    >>> from recsys.data import from_arrays
    >>> train = from_arrays(np.array(["u", "u", "v"]), np.array(["a", "b", "b"]))
    >>> fold_in_users(np.eye(2, dtype=np.float32), train, FoldIn("mean"))
    array([[0.5, 0.5],
           [0. , 1. ]], dtype=float32)
    """
    vectors = _check_item_vectors(item_vectors, train)
    engine = Engine(vectors, np.zeros((train.n_users, vectors.shape[1]), np.float32), train.users, train.items,
                    foldin=DEFAULT_FOLDIN if foldin is None else foldin)
    history = train.matrix()
    out = np.zeros((train.n_users, vectors.shape[1]), np.float32)
    # one small solve per user: a second BLAS thread only contends (measured 40x slower on 2 busy cores)
    with threadpool_limits(limits=1, user_api="blas"):
        for user in np.flatnonzero(np.diff(history.indptr)):
            lo, hi = history.indptr[user], history.indptr[user + 1]
            out[user] = engine.fold_in(history.indices[lo:hi], history.data[lo:hi])
    return out


def evaluate_item_vectors(item_vectors: np.ndarray, train: Interactions, test: Interactions,
                          k: int | Sequence[int] = 10, *, foldin: FoldIn | dict | None = None,
                          candidates: np.ndarray | None = None) -> dict[str, float]:
    """`recsys.evaluate` of an `Engine` over these item vectors, users folded in from their `train` history.

    Parameters
    ----------
    item_vectors : numpy.ndarray
        (train.n_items, d), in item index order: learned, content (`content_vectors`, `read_item_vectors`)
        or hybrid (`hybrid_vectors`).
    train, test : Interactions
        Splits of one log (they share id maps). Training items are excluded from each user's ranking.
    k : int or sequence of int
        The cutoffs.
    foldin : FoldIn or dict, optional
        How a history becomes a user vector (default `DEFAULT_FOLDIN`, a ridge solve); pass a model's own
        (``model.engine_.foldin``) to reproduce its user vectors.
    candidates : numpy.ndarray, optional
        A boolean mask (or index array) of the items to rank among, e.g. only the cold items for a cold
        test ("which of the new items suits this user"). Default: the whole catalogue.

    Returns
    -------
    dict
        The metrics of `recsys.evaluate` (``ndcg@10``, ``hit_rate@10``, ...).

    >>> from recsys.data import from_arrays
    >>> log = from_arrays(np.array(["u", "u", "v", "v"]), np.array(["a", "b", "c", "d"]))
    >>> train, test = log.subset(np.array([True, False, True, False])), log.subset(np.array([False, True] * 2))
    >>> vectors = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    >>> evaluate_item_vectors(vectors, train, test, k=1)["hit_rate@1"]
    1.0
    """
    if test.users != train.users or test.items != train.items:
        raise DataValidationError("test must share train's id maps: split one Interactions with "
                                  "cold_item_split or the recsys.data splits.")
    vectors = _check_item_vectors(item_vectors, train)
    foldin = DEFAULT_FOLDIN if foldin is None else FoldIn.from_dict(foldin)
    users = fold_in_users(vectors, train, foldin)
    seen = train.matrix(binary=True)
    if candidates is None:
        return evaluate(Engine(vectors, users, train.users, train.items, seen=seen, foldin=foldin), test, k)
    keep = _candidate_indices(candidates, train.n_items)
    items = IdMap(train.items.ids[keep])
    engine = Engine(vectors[keep], users, train.users, items, seen=seen[:, keep], foldin=foldin)
    return evaluate(engine, _restrict_items(test, keep, items), k)


def cold_start_table(item_vectors: Mapping[str, np.ndarray], train: Interactions, warm_test: Interactions,
                     cold_test: Interactions, k: int = 10, *,
                     foldins: Mapping[str, FoldIn | dict] | None = None) -> pd.DataFrame:
    """NDCG@k and HitRate@k of each set of item vectors on the splits of `cold_item_split`, one row per set.

    Three protocols (column groups): 'warm' (warm test, ranked over the whole catalogue), 'cold, new items'
    (cold test, ranked among the items without training interactions: which new item suits this user) and
    'cold, catalogue' (cold test, ranked over the whole catalogue: does a new item beat the known ones).
    foldins: a fold-in per name (default `DEFAULT_FOLDIN`), e.g. the model's own for its learned vectors.

    >>> from recsys.data import from_arrays
    >>> log = from_arrays(np.repeat(["u", "v"], 3), np.array(list("abcdef")), timestamp=np.arange(6))
    >>> train, warm_test, cold_test = cold_item_split(log, fraction=0.4, seed=0)
    >>> table = cold_start_table({"one-hot": np.eye(6, dtype=np.float32)}, train, warm_test, cold_test, k=2)
    >>> list(table.columns.get_level_values(0).unique())
    ['warm', 'cold, new items', 'cold, catalogue']
    """
    foldins = dict(foldins or {})
    cold = ~warm_items(train)
    rows = {}
    for name, vectors in item_vectors.items():
        runs = {"warm": (warm_test, None), "cold, new items": (cold_test, cold), "cold, catalogue": (cold_test, None)}
        rows[name] = {
            (protocol, metric): value
            for protocol, (test, candidates) in runs.items()
            for metric, value in _accuracy(evaluate_item_vectors(vectors, train, test, k, foldin=foldins.get(name),
                                                                 candidates=candidates), k).items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def _accuracy(metrics: dict[str, float], k: int) -> dict[str, float]:
    return {f"ndcg@{k}": metrics[f"ndcg@{k}"], f"hit_rate@{k}": metrics[f"hit_rate@{k}"]}


def _check_item_vectors(item_vectors: np.ndarray, train: Interactions) -> np.ndarray:
    vectors = np.asarray(item_vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != train.n_items:
        raise DataValidationError(f"item_vectors has shape {vectors.shape}; it needs one row per item of the "
                                  f"split: ({train.n_items}, d), in item index order.")
    return vectors


def _candidate_indices(candidates: np.ndarray, n_items: int) -> np.ndarray:
    candidates = np.asarray(candidates)
    if candidates.dtype == bool:
        if candidates.shape != (n_items,):
            raise DataValidationError(f"candidates as a boolean mask needs shape ({n_items},); got "
                                      f"{candidates.shape}.")
        candidates = np.flatnonzero(candidates)
    keep = np.unique(candidates.astype(np.int64))
    if len(keep) == 0 or keep[0] < 0 or keep[-1] >= n_items:
        raise DataValidationError(f"candidates must name at least one item index in [0, {n_items}); got "
                                  f"{len(keep)} index(es) from {keep[:1]} to {keep[-1:]}.")
    return keep


def _restrict_items(inter: Interactions, keep: np.ndarray, items: IdMap) -> Interactions:
    """The interactions with the items `keep`, re-indexed into `items` (their ids, in the same order)."""
    position = np.full(inter.n_items, -1, np.int64)
    position[keep] = np.arange(len(keep))
    rows = position[inter.item_index] >= 0
    metadata = None if inter.item_metadata is None else inter.item_metadata.iloc[keep].reset_index(drop=True)
    return Interactions(inter.users, items, inter.user_index[rows], position[inter.item_index[rows]].astype(np.int32),
                        inter.weight[rows], None if inter.timestamp is None else inter.timestamp[rows], metadata)
