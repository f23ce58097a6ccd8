"""Item features for the two-tower's item tower, in numpy: `ItemFeaturizer` turns an item metadata frame into a
sparse bag of feature tokens per item (categorical values, multi-valued lists, words of text, bucketised numbers,
dense vectors), and `ItemTower` is the trained tower's feature half as plain arrays: the embedding of each token.
An item's vector from its features alone is the sum over columns of its tokens' mean embedding, unit length: what
the two-tower learns for items without interactions, and what a new item gets without retraining
(`recsys.additions`), with no torch.

    tower = ItemTower(ItemFeaturizer().fit(metadata), weights)   # weights: (n_features_, factors)
    tower.vectors(new_items_frame)                               # (len(frame), factors), unit rows
    ItemTower.from_state(tower.state(), weights)                 # as a bundle stores it (JSON + one array)
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data import is_missing
from .encoders import MINILM_DIMS, encode_columns
from .exceptions import DataValidationError

log = logging.getLogger("recsys")

FEATURE_KINDS = ("categorical", "multi", "text", "numeric", "dense")
SENTENCE = "<sentence>"  # the feature of `text_columns` written as one text and read by the pretrained encoder
UNKNOWN = "<unk>"  # token 0 of every column: missing values, or only values outside the vocabulary
_WORD = re.compile(r"\w+")


# -------------------------------------------------------------------------------------------- features
def _list_like(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Series))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def detect_kind(values: pd.Series, n_buckets: int = 10) -> str | None:
    """Guess how to featurise a metadata column: 'categorical', 'multi', 'text', 'numeric', 'dense' or None.

    Booleans and numbers with at most `n_buckets` distinct values are categorical, other numbers numeric;
    lists of numbers are dense vectors (e.g. an encoder's output, `recsys.content.read_item_vectors`); other
    lists (or strings with a '|' separator, e.g. "Comedy|Drama") are multi-valued; strings that average
    two words or more, or are mostly distinct, are text (e.g. titles); other strings are categorical.
    """
    present = values[[not is_missing(v) for v in values]] if values.dtype == object else values.dropna()
    if len(present) == 0:
        return None
    if pd.api.types.is_bool_dtype(present):
        return "categorical"
    if pd.api.types.is_numeric_dtype(present):
        return "numeric" if present.nunique() > n_buckets else "categorical"
    sample = present.to_numpy(dtype=object)
    if all(_list_like(v) and len(v) and all(_is_number(x) for x in v) for v in sample):
        return "dense"
    if any(_list_like(v) for v in sample):
        return "multi"
    if not all(isinstance(v, str) for v in sample):
        return None
    text = pd.Series(sample, dtype=object)
    if text.str.contains("|", regex=False).any():
        return "multi"
    words = text.map(lambda s: len(_WORD.findall(s))).mean()
    return "text" if words >= 2 or text.nunique() > 0.5 * len(text) else "categorical"


class ItemFeaturizer:
    """Item metadata frame -> sparse (items x feature tokens) matrix whose row is a bag of weighted tokens.

    Each column contributes the mean of its tokens (weights 1/n within the column), so an item's feature
    vector is the sum over columns of the mean token embedding. Token 0 of every column stands for a
    missing value or values all outside the vocabulary. Vocabularies (and numeric bucket edges) are learned
    by `fit`, from the rows given (the items with training interactions), keeping tokens seen on at least
    `min_count` items, the `max_vocab` most frequent per column.

    features: None (auto-detect every column except `item`), a list of columns (auto-detected kinds) or a
    dict {column: kind} with kind in FEATURE_KINDS. text_columns: columns written as one text per item and
    embedded by the pretrained sentence encoder (`recsys.content.text_vectors(encoder='minilm')`, the `text`
    extra) into one more dense feature, named SENTENCE; the encoder is loaded only to transform.
    """

    def __init__(self, features: dict[str, str] | list[str] | None = None, *, max_vocab: int = 10_000,
                 min_count: int = 2, n_buckets: int = 10, text_columns: Sequence[str] = ()):
        self.features = features
        self.max_vocab = max_vocab
        self.min_count = min_count
        self.n_buckets = n_buckets
        self.text_columns = tuple(text_columns)

    def fit(self, metadata: pd.DataFrame, rows: np.ndarray | None = None) -> ItemFeaturizer:
        """Choose columns and kinds, learn vocabularies from `metadata` rows `rows` (default: all)."""
        fit_frame = metadata if rows is None else metadata.iloc[np.asarray(rows)]
        self.kinds_: dict[str, str] = {}
        for column, kind in self._requested(metadata).items():
            kind = kind or detect_kind(fit_frame[column], self.n_buckets)
            if kind is None:
                log.info("TwoTower features: column %r skipped (no usable values).", column)
                continue
            self.kinds_[column] = kind
        if self.text_columns:
            missing = [c for c in self.text_columns if c not in metadata.columns]
            if missing:
                raise DataValidationError(f"Text column(s) {missing} not in item_metadata. Available columns: "
                                          f"{[c for c in metadata.columns if c != 'item']}.")
            self.kinds_[SENTENCE] = "sentence"
        self.edges_: dict[str, np.ndarray] = {}
        self.vocab_: dict[str, dict[str, int]] = {}
        for column, kind in self.kinds_.items():
            if kind in ("dense", "sentence"):  # a feature per dimension: token embeddings become a projection
                dim = MINILM_DIMS if kind == "sentence" else self._dense(metadata, column)[0].shape[1]
                self.vocab_[column] = {UNKNOWN: 0} | {f"dim{j}": j + 1 for j in range(dim)}
                continue
            if kind == "numeric":
                self.edges_[column] = self._edges(fit_frame[column])
            counts = Counter(t for tokens in self._tokens(column, fit_frame[column]) for t in set(tokens))
            kept = sorted((t for t, c in counts.items() if c >= self.min_count), key=lambda t: (-counts[t], t))
            self.vocab_[column] = {UNKNOWN: 0} | {t: j + 1 for j, t in enumerate(kept[:self.max_vocab])}
        self.offsets_: dict[str, int] = {}
        total = 0
        for column, vocab in self.vocab_.items():
            self.offsets_[column] = total
            total += len(vocab)
        self.n_features_ = total
        return self

    def transform(self, metadata: pd.DataFrame) -> sp.csr_matrix:
        """(len(metadata), n_features_) CSR matrix: per column, weight 1/n on each of the n known tokens."""
        rows, cols, vals = [], [], []
        for column, vocab in self.vocab_.items():
            offset = self.offsets_[column]
            if self.kinds_[column] in ("dense", "sentence"):
                vectors, present = self._dense(metadata, column, len(vocab) - 1)
                for r in range(len(metadata)):  # unit length, so the column weighs like the others; missing: 0
                    known = np.arange(1, len(vocab)) if present[r] else np.zeros(1, np.int64)
                    rows += [r] * len(known)
                    cols += list(offset + known)
                    vals += list(vectors[r]) if present[r] else [1.0]
                continue
            for r, tokens in enumerate(self._tokens(column, metadata[column])):
                known = sorted({vocab[t] for t in tokens if t in vocab}) or [0]
                rows += [r] * len(known)
                cols += [offset + j for j in known]
                vals += [1.0 / len(known)] * len(known)
        return sp.csr_matrix((np.asarray(vals, np.float32), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
                             shape=(len(metadata), self.n_features_))

    def state(self) -> dict[str, Any]:
        """The fitted featurizer as JSON-able data (`from_state` reads it back)."""
        return {"features": self.features, "max_vocab": self.max_vocab, "min_count": self.min_count,
                "n_buckets": self.n_buckets, "text_columns": list(self.text_columns), "kinds": self.kinds_,
                "vocab": self.vocab_,
                "edges": {c: e.tolist() for c, e in self.edges_.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ItemFeaturizer:
        """A fitted featurizer from `state()`'s output."""
        out = cls(state["features"], max_vocab=state["max_vocab"], min_count=state["min_count"],
                  n_buckets=state["n_buckets"], text_columns=state.get("text_columns", ()))
        out.kinds_, out.vocab_ = dict(state["kinds"]), {c: dict(v) for c, v in state["vocab"].items()}
        out.edges_ = {c: np.asarray(e, np.float64) for c, e in state["edges"].items()}
        out.offsets_, total = {}, 0
        for column, vocab in out.vocab_.items():
            out.offsets_[column] = total
            total += len(vocab)
        out.n_features_ = total
        return out

    def tokens(self, column: str, values: Iterable[Any]) -> list[list[str]]:
        """The tokens of each value of a fitted column (before the vocabulary is applied)."""
        return self._tokens(column, pd.Series(list(values), dtype=object))

    @property
    def columns(self) -> list[str]:
        """The metadata columns the fitted featurizer reads."""
        return list(dict.fromkeys([*(c for c in self.kinds_ if c != SENTENCE), *self.text_columns]))

    def describe(self) -> dict[str, dict]:
        """Per column: its kind and vocabulary size (unknown token included), JSON-able."""
        return {c: {"kind": k, "vocabulary": len(self.vocab_[c])} for c, k in self.kinds_.items()}

    # ------------------------------------------------------------------------------------------- helpers
    def _requested(self, metadata: pd.DataFrame) -> dict[str, str | None]:
        available = [c for c in metadata.columns if c != "item"]
        if self.features is None:
            return dict.fromkeys(available)
        wanted = dict(self.features) if isinstance(self.features, dict) else dict.fromkeys(self.features)
        bad = {c: k for c, k in wanted.items() if k is not None and k not in FEATURE_KINDS}
        if bad:
            raise DataValidationError(f"Unknown feature kind(s) {bad}: use one of {FEATURE_KINDS}.")
        missing = [c for c in wanted if c not in available]
        if missing:
            raise DataValidationError(f"Feature column(s) {missing} not in item_metadata. "
                                      f"Available columns: {available}.")
        return wanted

    def _dense(self, metadata: pd.DataFrame, column: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(unit vectors (n, dim), present (n,)) of a dense column; a row of another length, or with a value
        that is not a finite number, is an error naming the item and the column. The SENTENCE feature: the
        encoder's vectors of the text columns (an item without text: not present)."""
        if column == SENTENCE:
            vectors = encode_columns(metadata, self.text_columns)
            return vectors, np.linalg.norm(vectors, axis=1) > 0
        values = metadata[column].to_numpy(dtype=object)
        present = np.array([_list_like(v) and len(v) > 0 for v in values])
        if not present.any():
            raise DataValidationError(f"Dense feature column {column!r} holds no vector.")
        if dim is None:
            dim = len(values[np.flatnonzero(present)[0]])
        ids = metadata["item"].to_numpy(dtype=object) if "item" in metadata.columns else np.arange(len(values))
        out = np.zeros((len(values), dim), np.float32)
        for r in np.flatnonzero(present):
            row = np.asarray(values[r], dtype=object)
            if len(row) != dim:
                raise DataValidationError(f"Item {ids[r]!r} in column {column!r} has {len(row)} values; every "
                                          f"vector needs {dim}. Fix or drop that row.")
            if not all(_is_number(x) and np.isfinite(x) for x in row):
                raise DataValidationError(f"Item {ids[r]!r} in column {column!r} holds a value that is not a "
                                          "finite number. Fix or drop that row.")
            out[r] = row.astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1), present

    def _edges(self, values: pd.Series) -> np.ndarray:
        finite = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        finite = finite[np.isfinite(finite)]
        if len(finite) == 0:
            return np.empty(0)
        return np.unique(np.quantile(finite, np.linspace(0, 1, self.n_buckets + 1)[1:-1]))

    def _tokens(self, column: str, values: pd.Series) -> list[list[str]]:
        kind = self.kinds_[column]
        if kind == "numeric":
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            bucket = np.searchsorted(self.edges_[column], numbers, side="right")
            return [[] if not np.isfinite(x) else [f"bucket{b}"] for x, b in zip(numbers, bucket)]
        out = []
        for value in values.to_numpy(dtype=object):
            if _list_like(value):
                items = [str(v).strip() for v in value if not is_missing(v)]
                out.append([v for v in items if v] if kind != "text" else
                           [w for v in items for w in _WORD.findall(v.lower())])
            elif is_missing(value):
                out.append([])
            elif kind == "multi":
                out.append([v.strip() for v in str(value).split("|") if v.strip()])
            elif kind == "text":
                out.append(_WORD.findall(str(value).lower()))
            else:
                out.append([str(value)])
        return out


# ------------------------------------------------------------------------------------------ parameters
class FeatureSpec:
    """`features`: None (auto-detect), a list of column names, or a dict {column: kind}."""

    def check(self, value: Any) -> bool:
        if value is None:
            return True
        if isinstance(value, list):
            return all(isinstance(c, str) for c in value)
        if isinstance(value, dict):
            return all(isinstance(c, str) and k in FEATURE_KINDS for c, k in value.items())
        return False

    def describe(self) -> str:
        return ("None (auto-detect every column), a list of column names, or a dict {column: kind} with kind "
                "one of " + ", ".join(repr(k) for k in FEATURE_KINDS))


@dataclass
class ItemTower:
    """A trained two-tower's feature half: the fitted featurizer and one embedding per feature token
    (weights, (n_features_, factors)). `vectors` places items by their features alone."""

    featurizer: ItemFeaturizer
    weights: np.ndarray

    def vectors(self, metadata: pd.DataFrame) -> np.ndarray:
        """(len(metadata), factors) float32 unit vectors of the items' features (columns the featurizer did not
        learn are ignored; a missing column counts as missing values)."""
        frame = metadata.copy()
        for column in self.featurizer.columns:
            if column not in frame.columns:
                frame[column] = None
        summed = np.asarray(self.featurizer.transform(frame) @ self.weights, np.float32)
        norms = np.linalg.norm(summed, axis=1, keepdims=True)
        return summed / np.where(norms > 0, norms, 1)

    def state(self) -> dict[str, Any]:
        return self.featurizer.state()

    @classmethod
    def from_state(cls, state: dict[str, Any], weights: np.ndarray) -> ItemTower:
        return cls(ItemFeaturizer.from_state(state), np.asarray(weights, np.float32))


class ColumnList:
    """A parameter holding None or a list of column names."""

    def check(self, value: Any) -> bool:
        return value is None or (isinstance(value, list) and all(isinstance(c, str) for c in value))

    def describe(self) -> str:
        return "None or a list of column names"
