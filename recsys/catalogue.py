"""`Catalogue`: what a bundle knows about its items: metadata (titles, attribute filters, records, scored item
lists) and popularity (how many users interacted with each)."""
from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data import IdMap, is_missing
from .exceptions import DataValidationError


@dataclass(frozen=True)
class Filter:
    """One condition on an item attribute: the item's value (or any of its list values, e.g. genres) is one of
    `values`; or, with `op` '<=' / '>=', its number is within `bound` (items without a number fail it).
    Values compare as text (1995.0 and '1995' are equal), so a filter typed in a URL matches numbers too."""

    column: str
    values: tuple[str, ...] = ()
    op: str = ":"
    bound: float | None = None

    @classmethod
    def parse(cls, text: str) -> Filter:
        """'category:shoes', 'brand:acme,zeta' (any of them), 'price<=100', 'price>=9.5'.

        >>> Filter.parse("brand:acme, zeta"), Filter.parse("price<=100").bound
        (Filter(column='brand', values=('acme', 'zeta'), op=':', bound=None), 100.0)
        """
        at = {op: text.find(op) for op in (":", "<=", ">=") if op in text}
        op = min(at, key=at.get) if at else ":"  # the first operator: 'url:a<=b' is a value with '<=' in it
        column, found, rest = text.partition(op)
        if found and op != ":" and column.strip():
            try:
                return cls(column.strip(), op=op, bound=float(rest))
            except ValueError:
                raise DataValidationError(f"Filter {text!r}: {rest.strip()!r} is not a number. Write "
                                          f"{column.strip()}{op}<number>, e.g. {column.strip()}{op}100.") from None
        wanted = tuple(v.strip() for v in rest.split(",") if v.strip())
        if not found or not column.strip() or not wanted:
            raise DataValidationError(f"Filter {text!r} is not understood. Write attribute:value (or value,value "
                                      "for any of several), attribute<=number or attribute>=number, e.g. "
                                      "category:shoes or price<=100.")
        return cls(column.strip(), wanted)


Filters = Mapping[str, object] | Sequence[Filter | str]  # {column: value(s)}, Filter objects or their text


def as_filters(filters: Filters | None) -> list[Filter]:
    """Filters in any accepted form as Filter objects: a {column: value or values} mapping (any of the values),
    Filter objects, or their text (`Filter.parse`)."""
    if not filters:
        return []
    if isinstance(filters, Mapping):
        return [Filter(column, tuple(_text(v) for v in (wanted if isinstance(wanted, (list, tuple, set, frozenset))
                                                         else [wanted])))
                for column, wanted in filters.items()]
    return [f if isinstance(f, Filter) else Filter.parse(f) for f in filters]


def _holds_numbers(column: pd.Series) -> bool:
    try:
        return bool(pd.to_numeric(column, errors="coerce").notna().any())
    except (TypeError, ValueError):  # list values (genres, tags)
        return False


def _text(value: object) -> str:
    """How an attribute value compares with a filter's: text, integral floats without '.0'."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


class Catalogue:
    """The items of a bundle (`items`, an IdMap), their metadata frame (column 'item' plus attributes, one row
    per item in index order; None when the bundle has none) and `seen`, the users x items matrix of the
    training interactions (popularity counts its stored entries)."""

    def __init__(self, items: IdMap, metadata: pd.DataFrame | None = None, seen: sp.csr_matrix | None = None):
        self.items, self.metadata = items, metadata
        self.seen = seen if seen is not None else sp.csr_matrix((0, len(items)), dtype=np.float32)
        self._titles: np.ndarray | None = None
        self._attribute_cache: dict[int, tuple[dict[str, object], str]] = {}
        self._attribute_columns: list[tuple[str, np.ndarray]] | None = None

    @property
    def popularity(self) -> np.ndarray:
        """How many users interacted with each item in `seen` (float32, per item index)."""
        return self._popularity[1]

    @property
    def popular_order(self) -> np.ndarray:
        """Item indices, most interacted first (ties by index)."""
        return self._popularity[0]

    @functools.cached_property
    def _popularity(self) -> tuple[np.ndarray, np.ndarray]:  # computed on first use, then kept
        counts = np.asarray(self.seen.astype(bool).sum(axis=0)).ravel()
        return np.argsort(-counts, kind="stable"), counts.astype(np.float32)

    def popular(self, n: int, deny: np.ndarray, allow: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, user counts) of the n most popular items among `allow` (None: all), `deny` left out."""
        order = self.popular_order
        if allow is not None:
            allowed = np.zeros(len(self.items), bool)
            allowed[allow] = True
            order = order[allowed[order]]
        if len(deny):
            order = order[~np.isin(order, deny)]
        top = order[:n]
        return top, self.popularity[top]

    def titles(self, item_ids: np.ndarray) -> np.ndarray | None:
        """Titles for external item ids (None where unknown), if the bundle has item metadata."""
        return self.titles_at(self.items.to_index(np.ravel(item_ids), missing="ignore"), np.shape(item_ids))

    def titles_at(self, idx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
        """Titles for item indices (-1: None), reshaped to `shape`; None without a title column."""
        if self._titles is None:  # built once: per-request conversion of the column was a hot spot
            if self.metadata is None or "title" not in self.metadata:
                return None
            titles = self.metadata["title"].to_numpy(dtype=object).copy()
            titles[pd.isna(titles)] = None
            self._titles = titles
        out = self._titles[np.maximum(idx, 0)]
        out[idx < 0] = None
        return out.reshape(shape)

    def mask(self, filters: Filters) -> np.ndarray:
        """Boolean mask over items passing every filter (`as_filters`: a {column: values} mapping, `Filter`s
        or their text such as 'category:shoes' or 'price<=100')."""
        meta = self.metadata
        if meta is None:
            raise DataValidationError("This model has no item metadata, so attribute filters cannot apply. "
                                      "Train with item metadata (CLI: --items) or drop the filter.")
        mask = np.ones(len(self.items), bool)
        for f in as_filters(filters):
            if f.column not in meta.columns or f.column == "item":
                raise DataValidationError(f"Unknown item attribute {f.column!r} in filters. Available: "
                                          f"{[c for c in meta.columns if c != 'item']}.")
            col = meta[f.column]
            if f.bound is not None:
                if f.column not in self.attributes[1]:
                    raise DataValidationError(f"Item attribute {f.column!r} holds no numbers, so {f.op} cannot "
                                              f"apply to it: filter it by value, e.g. {f.column}:<value>.")
                numbers = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                mask &= numbers <= f.bound if f.op == "<=" else numbers >= f.bound  # (NaN fails both)
                continue
            values = set(f.values)
            mask &= np.fromiter(
                (any(_text(x) in values for x in v) if isinstance(v, (list, tuple, np.ndarray)) else
                 not is_missing(v) and _text(v) in values for v in col.to_numpy(dtype=object)),
                dtype=bool, count=len(col))
        return mask

    @functools.cached_property
    def attributes(self) -> tuple[list[str], list[str]]:
        """(every attribute column, those holding numbers): what filters can name, and bound."""
        if self.metadata is None:
            return [], []
        columns = [str(c) for c in self.metadata.columns if c != "item"]
        return columns, [c for c in columns if _holds_numbers(self.metadata[c])]

    def allowed(self, items: Iterable[object] | None = None, filters: Filters | None = None
                ) -> np.ndarray | None:
        """Item indices passing an allow-list of ids and attribute filters (None: no restriction)."""
        allow = None if items is None else np.unique(self.items.to_index(items, kind="item"))
        if filters:
            passing = np.flatnonzero(self.mask(filters))
            allow = passing if allow is None else np.intersect1d(allow, passing)
        return allow

    def record(self, item_id: object) -> dict[str, object]:
        """The item's metadata row as a plain dict: {"item": id, column: value, ...} (`attributes_at`'s values).
        Just {"item": id} when the bundle has no item metadata; an unknown id raises UnknownIdError."""
        i = self.items.index(item_id, kind="item")
        return {"item": str(self.items.ids[i]), **self.attributes_at([i])[0]}

    def attributes_at(self, idx: Sequence[int]) -> list[dict[str, object]]:
        """Each item's metadata columns as JSON holds them: numpy scalars as Python numbers, list-likes (genres,
        tags) as lists of str, other values as stored (text); missing values left out; {} without metadata.
        Made once per item and kept (every recommended item carries them)."""
        if self.metadata is None:
            return [{} for _ in idx]
        return [self._attributes(int(i))[0] if i >= 0 else {} for i in idx]

    def attributes_json_at(self, idx: Sequence[int]) -> list[str]:
        """`attributes_at` as JSON text, as Flask's default provider writes it (keys sorted, ASCII)."""
        if self.metadata is None:
            return ["{}" for _ in idx]
        return [self._attributes(int(i))[1] if i >= 0 else "{}" for i in idx]

    def _attributes(self, i: int) -> tuple[dict[str, object], str]:
        found = self._attribute_cache.get(i)
        if found is None:
            if self._attribute_columns is None:  # column arrays, read once: a row through .iloc cost 0.2 ms
                self._attribute_columns = [(str(c), self.metadata[c].to_numpy()) for c in self.metadata.columns
                                           if c != "item"]
            row = {}
            for column, values in self._attribute_columns:
                value = values[i]
                if isinstance(value, (list, tuple, np.ndarray)):
                    row[column] = [str(v) for v in value]
                elif not is_missing(value):
                    value = value.item() if isinstance(value, np.generic) else value
                    row[column] = value if isinstance(value, (str, int, float, bool)) else str(value)
            found = self._attribute_cache[i] = row, json.dumps(row, sort_keys=True)
        return found

    def scored_items(self, item_ids: np.ndarray, scores: np.ndarray, item_index: np.ndarray | None = None
                     ) -> list[dict[str, object]]:
        """[{"id", "score", "title", "attributes"}, ...] for item ids best first and their scores, None ids (the
        padding of a short answer) left out: the item list the service answers and `recsys recommend --json`
        prints ("attributes" only when the bundle has item metadata). item_index: the items' indices, when known
        (`Recommendation.item_index`): titles without a look-up."""
        ids, scores, titles, idx = self.scored_item_fields(item_ids, scores, item_index)
        items = [{"id": i, "score": sc, "title": t} for i, sc, t in zip(ids, scores, titles)]
        if self.metadata is not None:
            for item, attributes in zip(items, self.attributes_at(idx)):
                item["attributes"] = attributes
        return items

    def scored_item_fields(self, item_ids: np.ndarray, scores: np.ndarray, item_index: np.ndarray | None = None
                           ) -> tuple[list[str], list[float], list[str | None], np.ndarray]:
        """What `scored_items` lists, as lists (ids, scores, titles) and the items' indices: for an encoder that
        writes the item list without building its dicts (the service's recommendations answer)."""
        item_ids = np.asarray(item_ids, dtype=object)
        if item_index is None:
            valid = np.not_equal(item_ids, None)
            item_ids, scores = item_ids[valid], np.asarray(scores)[valid]
            item_index = self.items.to_index(item_ids, missing="ignore")
            titles = self.titles_at(item_index, np.shape(item_ids))
        else:
            titles = self.titles_at(np.asarray(item_index), np.shape(item_ids))
        titles = [None] * len(item_ids) if titles is None else [
            None if t is None else str(t) for t in titles.tolist()]
        return ([str(i) for i in item_ids.tolist()], np.asarray(scores, dtype=np.float64).tolist(), titles,
                np.asarray(item_index))
