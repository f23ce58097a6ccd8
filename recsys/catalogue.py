"""`Catalogue`: what a bundle knows about its items: metadata (titles, attribute filters, records, scored item
lists) and popularity (how many users interacted with each)."""
from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data import IdMap, is_missing
from .exceptions import DataValidationError


class Catalogue:
    """The items of a bundle (`items`, an IdMap), their metadata frame (column 'item' plus attributes, one row
    per item in index order; None when the bundle has none) and `seen`, the users x items matrix of the
    training interactions (popularity counts its stored entries)."""

    def __init__(self, items: IdMap, metadata: pd.DataFrame | None = None, seen: sp.csr_matrix | None = None):
        self.items, self.metadata = items, metadata
        self.seen = seen if seen is not None else sp.csr_matrix((0, len(items)), dtype=np.float32)
        self._titles: np.ndarray | None = None

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

    def mask(self, filters: dict[str, object]) -> np.ndarray:
        """Boolean mask over items: for every column, the item's value (or any of its list values, e.g.
        genres) is one of the wanted values."""
        meta = self.metadata
        if meta is None:
            raise DataValidationError("This model has no item metadata, so attribute filters cannot apply. "
                                      "Train with item metadata (CLI: --items) or drop the filter.")
        mask = np.ones(len(self.items), bool)
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

    def allowed(self, items: Iterable[object] | None = None, filters: dict[str, object] | None = None
                ) -> np.ndarray | None:
        """Item indices passing an allow-list of ids and attribute filters (None: no restriction)."""
        allow = None if items is None else np.unique(self.items.to_index(items, kind="item"))
        if filters:
            passing = np.flatnonzero(self.mask(filters))
            allow = passing if allow is None else np.intersect1d(allow, passing)
        return allow

    def record(self, item_id: object) -> dict[str, object]:
        """The item's metadata row as a plain dict: {"item": id, column: value, ...}. Values are as stored,
        except list-likes (genres, tags), which become lists of str; missing values are left out. Just
        {"item": id} when the bundle has no item metadata; an unknown id raises UnknownIdError."""
        i = self.items.index(item_id, kind="item")
        record: dict[str, object] = {"item": str(self.items.ids[i])}
        if self.metadata is None:
            return record
        for column, value in self.metadata.iloc[i].items():
            if column == "item":
                continue
            if isinstance(value, (list, tuple, np.ndarray)):
                record[column] = [str(v) for v in value]
            elif not is_missing(value):
                record[column] = value
        return record

    def scored_items(self, item_ids: np.ndarray, scores: np.ndarray, item_index: np.ndarray | None = None
                     ) -> list[dict[str, object]]:
        """[{"id", "score", "title"}, ...] for item ids best first and their scores, None ids (the padding of a
        short answer) left out: the item list the service answers and `recsys recommend --json` prints.
        item_index: the items' indices, when known (`Recommendation.item_index`): titles without a look-up."""
        return [{"id": i, "score": sc, "title": t}
                for i, sc, t in zip(*self.scored_item_fields(item_ids, scores, item_index))]

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
            titles = self.titles_at(np.asarray(item_index), np.shape(item_ids))
        titles = [None] * len(item_ids) if titles is None else [
            None if t is None else str(t) for t in titles.tolist()]
        return [str(i) for i in item_ids.tolist()], np.asarray(scores, dtype=np.float64).tolist(), titles


