"""Interaction logs -> validated, id-mapped `Interactions`; splits. Knows nothing of models (no torch).

>>> from recsys.datasets import bundled_dir
>>> inter = read_interactions(bundled_dir() / "ratings.csv", user_col="userId", item_col="movieId",
...                           weight_col="rating", time_col="timestamp")
>>> inter.n_users, inter.n_items
(610, 9724)
>>> train, test = temporal_split(inter, test_fraction=0.2)
>>> train.nnz + test.nnz == inter.nnz
True
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .exceptions import DataValidationError, UnknownIdError

log = logging.getLogger("recsys")

Source = pd.DataFrame | str | Path
DUPLICATE_POLICIES = ("sum", "max", "last")


# ----------------------------------------------------------------------------------------------- id maps
class IdMap:
    """Bidirectional map between external string ids and contiguous indices 0..n-1."""

    def __init__(self, ids: Iterable[str]):
        self.ids = np.asarray([str(x) for x in ids], dtype=object)
        self._index = {x: i for i, x in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise DataValidationError("IdMap ids must be unique; found duplicates.")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, external_id: object) -> bool:
        return str(external_id) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and np.array_equal(self.ids, other.ids)

    def index(self, external_id: object, kind: str = "id") -> int:
        try:
            return self._index[str(external_id)]
        except KeyError:
            raise UnknownIdError(f"Unknown {kind} {external_id!r}: it is not in the model's {len(self)} {kind}s.")

    def to_index(self, external_ids: Iterable[object], missing: Literal["raise", "ignore"] = "raise",
                 kind: str = "id") -> np.ndarray:
        """Indices of `external_ids`; unknown ids raise, or map to -1 with missing='ignore'."""
        if missing == "raise":
            return np.fromiter((self.index(x, kind) for x in external_ids), dtype=np.int64)
        get = self._index.get
        return np.fromiter((get(str(x), -1) for x in external_ids), dtype=np.int64)

    def to_ids(self, indices: np.ndarray) -> np.ndarray:
        """External ids for `indices`; -1 (padding) becomes None."""
        indices = np.asarray(indices)
        out = self.ids[np.where(indices < 0, 0, indices)] if len(self) else np.full(indices.shape, None)
        out = np.asarray(out, dtype=object)
        out[indices < 0] = None
        return out

    def to_json(self) -> str:
        return json.dumps(list(self.ids))

    @classmethod
    def from_json(cls, text: str) -> IdMap:
        return cls(json.loads(text))


# ----------------------------------------------------------------------------------------- interactions
@dataclass
class Interactions:
    """One row per (user, item) pair: indices into `users`/`items`, a weight and an optional timestamp.

    `timestamp` is int64 seconds since the Unix epoch (UTC) or None. `item_metadata` (optional) is a frame
    aligned with `items` (row i describes item index i).
    """

    users: IdMap
    items: IdMap
    user_index: np.ndarray
    item_index: np.ndarray
    weight: np.ndarray
    timestamp: np.ndarray | None = None
    item_metadata: pd.DataFrame | None = field(default=None, repr=False)
    n_dropped: int = 0  # bad rows dropped while reading (on_error='drop')

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def nnz(self) -> int:
        return len(self.user_index)

    def __len__(self) -> int:
        return self.nnz

    def matrix(self, binary: bool = False) -> sp.csr_matrix:
        """Users x items CSR matrix of weights (or ones), with sorted column indices."""
        data = np.ones(self.nnz, np.float32) if binary else self.weight.astype(np.float32)
        m = sp.csr_matrix((data, (self.user_index, self.item_index)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.sort_indices()
        return m

    def subset(self, mask: np.ndarray) -> Interactions:
        """The rows where `mask` is true, keeping the same id maps (indices stay comparable)."""
        return Interactions(self.users, self.items, self.user_index[mask], self.item_index[mask],
                            self.weight[mask], None if self.timestamp is None else self.timestamp[mask],
                            self.item_metadata)

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({"user": self.users.ids[self.user_index], "item": self.items.ids[self.item_index],
                              "weight": self.weight})
        if self.timestamp is not None:
            frame["timestamp"] = pd.to_datetime(self.timestamp, unit="s", utc=True)
        return frame

    def item_titles(self) -> np.ndarray | None:
        if self.item_metadata is None or "title" not in self.item_metadata:
            return None
        return self.item_metadata["title"].to_numpy(dtype=object)


# ------------------------------------------------------------------------------------------- reading
DELIMITERS = (",", ";", "\t", "|")  # what `detect_delimiter` considers


def detect_delimiter(path: str | Path, default: str = ",") -> str:
    """The delimiter of a delimited text file (plain or .gz): of `DELIMITERS`, the one that splits the header
    into the most fields (at least two) with the same number of fields on each of the next lines read (quotes
    respected); `default` when none does. Spreadsheets in many locales write ';' (the decimal comma).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "log.csv")
    >>> _ = open(path, "w").write('user;item;title\\nu1;i1;"a, b"\\nu2;i2;c\\n')
    >>> detect_delimiter(path)
    ';'
    """
    import csv
    import gzip
    import itertools

    path = Path(path)
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
        lines = list(itertools.islice(f, 50))
    best, width = default, 1
    for candidate in DELIMITERS:
        rows = [r for r in csv.reader(lines, delimiter=candidate) if r]
        if rows and len(rows[0]) > width and all(len(r) == len(rows[0]) for r in rows[1:-1]):
            best, width = candidate, len(rows[0])
    return best


def _read_source(source: Source, id_cols: Sequence[str], sep: str | None) -> tuple[pd.DataFrame, str]:
    """(frame, how to name it in errors) of a DataFrame or a CSV / TSV / Parquet file (delimiter `sep`, or
    detected by `detect_delimiter`: the name then says which was used)."""
    if isinstance(source, pd.DataFrame):
        return source, "the DataFrame"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"Interaction log {str(path)!r} does not exist. Pass the path of a CSV or "
                                "Parquet file.")
    suffix = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path), repr(path.name)
    if not suffix.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")):
        raise DataValidationError(f"Cannot read {str(path)!r}: unknown file type {path.suffix!r}. "
                                  "Use .csv, .tsv or .parquet (or pass a pandas DataFrame).")
    how = "given"
    if sep is None:
        sep, how = detect_delimiter(path, "\t" if ".tsv" in suffix else ","), "detected"
    try:
        header = pd.read_csv(path, sep=sep, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"Interaction log {str(path)!r} is empty (no header row and no data).")
    frame = pd.read_csv(path, sep=sep, dtype={c: str for c in id_cols if c in header})
    return frame, f"{path.name!r} (delimiter {sep!r}, {how}; set it with sep= or --sep)"


def read_table(source: Source, *, sep: str | None = None, id_cols: Sequence[str] = ()) -> pd.DataFrame:
    """A DataFrame, or a CSV / TSV / Parquet file read as `read_interactions` reads logs (the delimiter `sep` or
    detected), for item files (`recsys train --items`). id_cols: read as text, and required."""
    frame, where = _read_source(source, id_cols, sep)
    missing = [c for c in id_cols if c not in frame.columns]
    if missing:
        raise DataValidationError(f"Column {missing[0]!r} not found in {where}. Available columns: "
                                  f"{list(frame.columns)}.")
    return frame


def ids_as_str(col: pd.Series) -> pd.Series:
    """Ids as pandas strings, missing values kept missing. With pandas 3 the column stays Arrow-backed (no
    Python object per row: at 20M rows the object path held gigabytes and took seconds per column)."""
    if isinstance(col.dtype, pd.StringDtype):
        return col
    if pd.api.types.is_float_dtype(col):  # 1.0 -> "1" when every value is integral (NaN-padded int ids)
        finite = col.dropna()
        if len(finite) and np.all(np.mod(finite, 1) == 0):
            col = col.astype("Int64")
    null = col.isna().to_numpy()
    out = col.astype(object).where(~null, None)
    return out.map(str, na_action="ignore").astype(_string_dtype())


def _string_dtype() -> object:
    """pandas' default string dtype (Arrow-backed "str" with pandas 3), or object before pandas 3."""
    return "str" if int(pd.__version__.split(".")[0]) >= 3 else object


def _id_codes(ids: object) -> tuple[np.ndarray, np.ndarray]:
    """(codes, sorted unique ids as an object array) of a sequence of external ids, each read as str."""
    series = ids if isinstance(ids, pd.Series) and isinstance(ids.dtype, pd.StringDtype) else \
        pd.Series(np.asarray(ids, dtype=object)).map(str).astype(_string_dtype())
    codes, uniques = pd.factorize(series, sort=True)
    if len(codes) and codes.min() < 0:
        raise DataValidationError(f"{int((codes < 0).sum())} id(s) are missing: every row needs a user id and an "
                                  "item id (read_interactions names the rows).")
    return codes, np.asarray(uniques, dtype=object)


def _bad_rows_error(name: str, role: str, bad: np.ndarray, frame: pd.DataFrame, what: str, fix: str,
                    where: str, file_lines: bool) -> DataValidationError:
    pos = int(np.flatnonzero(bad)[0])
    value = frame[name].iloc[pos]
    shown = "" if pd.isna(value) else f" {value!r}"
    line = f" (line {pos + 2} of the file)" if file_lines else ""
    return DataValidationError(
        f"Column {name!r} ({role}) in {where} has {what}{shown} at row {pos}{line}; "
        f"{int(bad.sum())} row(s) in all. {fix} Or pass on_error='drop' (CLI: --drop-bad-rows) to drop bad rows.")


def read_interactions(
    source: Source,
    *,
    user_col: str = "user",
    item_col: str = "item",
    weight_col: str | None = None,
    time_col: str | None = None,
    duplicates: Literal["sum", "max", "last"] = "sum",
    on_error: Literal["raise", "drop"] = "raise",
    time_unit: str = "s",
    item_metadata: pd.DataFrame | None = None,
    catalog: Literal["interactions", "metadata"] = "interactions",
    seed: int = 0,
    sep: str | None = None,
    title_col: str | None = None,
) -> Interactions:
    """Read, validate, deduplicate and id-map an interaction log.

    source: a DataFrame or the path of a CSV/TSV/Parquet file (sep: its delimiter; None detects it, see
    `detect_delimiter`). Ids are read as strings. Weights default to 1.
    Numeric timestamps are read in `time_unit` since the epoch; strings are parsed as dates.
    duplicates: how repeated (user, item) rows combine: 'sum' or 'max' of weights (latest timestamp), or
    'last' (the row with the latest timestamp; rows at the same time in a random order seeded by `seed`;
    file order in a log without timestamps). Timestamps that are all equal make the log untimed (a warning).
    on_error: 'raise' on the first bad row (the message names column, row and fix), or 'drop' bad rows and
    log how many were dropped (the count is also on the result as `n_dropped`).
    item_metadata: optional frame with an `item` column (plus e.g. title, genres), aligned to the item map.
    catalog: which items get an index. 'interactions' (default): the items of the log only (metadata rows
    of other items are ignored). 'metadata': also every item of `item_metadata`, with or without
    interactions, so that models using item features can score cold-start items (other models simply
    leave those items uninformed).
    title_col: the metadata column that names an item (shown as its title in answers); default 'title', else
    guessed (`with_title`).
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise DataValidationError(f"The 'duplicates' parameter must be one of {DUPLICATE_POLICIES}. "
                                  f"Got {duplicates!r}.")
    if on_error not in ("raise", "drop"):
        raise DataValidationError(f"The 'on_error' parameter must be 'raise' or 'drop'. Got {on_error!r}.")
    _check_catalog(catalog, item_metadata)
    item_metadata = with_title(item_metadata, title_col)
    roles = {"user_col": user_col, "item_col": item_col, "weight_col": weight_col, "time_col": time_col}
    wanted = {role: c for role, c in roles.items() if c is not None}
    frame, where = _read_source(source, [user_col, item_col], sep)
    # CSV/TSV rows have line numbers; Parquet files and DataFrames do not
    file_lines = not isinstance(source, pd.DataFrame) and Path(source).suffix.lower() not in (".parquet", ".pq")
    for role, name in wanted.items():
        if name not in frame.columns:
            raise DataValidationError(
                f"Column {name!r} ({role}) not found in {where}. Available columns: {list(frame.columns)}. "
                f"Pass {role}=<column name> (CLI: --{role.replace('_col', '-col')}).")
    frame = frame.reset_index(drop=True)
    n_rows = len(frame)
    bad = np.zeros(n_rows, dtype=bool)

    def check(mask: np.ndarray, name: str, role: str, what: str, fix: str) -> None:
        nonlocal bad
        if mask.any():
            if on_error == "raise":
                raise _bad_rows_error(name, role, mask, frame, what, fix, where, file_lines)
            bad |= mask

    users = ids_as_str(frame[user_col])
    items = ids_as_str(frame[item_col])
    for name, role, col in ((user_col, "user_col", users), (item_col, "item_col", items)):
        null = col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
        check(null, name, role, "a null or empty id", "Every row needs a user id and an item id.")

    if weight_col is not None:
        weight = pd.to_numeric(frame[weight_col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        check(~np.isfinite(weight), weight_col, "weight_col", "a non-numeric or missing weight",
              "Weights must be finite numbers.")
    else:
        weight = np.ones(n_rows)

    timestamp = None
    if time_col is not None:
        raw = frame[time_col]
        if pd.api.types.is_numeric_dtype(raw):
            parsed = pd.to_datetime(raw, unit=time_unit, utc=True, errors="coerce")
        elif pd.api.types.is_datetime64_any_dtype(raw):
            parsed = pd.to_datetime(raw, utc=True)
        else:
            as_num = pd.to_numeric(raw, errors="coerce")
            parsed = pd.to_datetime(as_num, unit=time_unit, utc=True, errors="coerce")
            text = as_num.isna() & raw.notna()  # per row: numbers are epoch offsets, other strings dates
            if text.any():
                dates = pd.to_datetime(raw.where(text), utc=True, errors="coerce", format="mixed")
                parsed = parsed.where(~text, dates)
        check(parsed.isna().to_numpy(), time_col, "time_col", "an unparsable or missing timestamp",
              "Use Unix seconds (or set time_unit) or an ISO 8601 date such as 2024-05-01T12:00:00Z.")
        timestamp = parsed.dt.tz_convert(None).to_numpy().astype("datetime64[s]").astype(np.int64)

    if bad.any():
        log.warning("Dropped %d of %d rows with bad values (on_error='drop').", int(bad.sum()), n_rows)
        keep = ~bad
        users, items, weight = users[keep], items[keep], weight[keep]
        timestamp = None if timestamp is None else timestamp[keep]
    if len(users) == 0:
        raise DataValidationError(f"No interactions left in {where}: the log is empty"
                                  + (" after dropping bad rows." if bad.any() else "."))
    inter = from_arrays(users, items, weight, timestamp, duplicates=duplicates,
                        item_metadata=item_metadata, catalog=catalog, seed=seed)
    inter.n_dropped = int(bad.sum())
    return inter


def from_arrays(users: np.ndarray | pd.Series, items: np.ndarray | pd.Series, weight: np.ndarray | None = None,
                timestamp: np.ndarray | None = None, *, duplicates: str = "sum",
                item_metadata: pd.DataFrame | None = None,
                catalog: Literal["interactions", "metadata"] = "interactions", seed: int = 0) -> Interactions:
    """Build `Interactions` from already-valid arrays of external ids (sorted id maps).

    catalog='metadata' also gives an index to every item of `item_metadata` without interactions (see
    `read_interactions`). Timestamps that are all equal carry no order: the log is treated as untimed (a
    warning says so). duplicates='last' breaks ties in time by a random draw seeded by `seed`.
    """
    _check_catalog(catalog, item_metadata)
    if duplicates not in DUPLICATE_POLICIES:
        raise DataValidationError(f"The 'duplicates' parameter must be one of {DUPLICATE_POLICIES}. "
                                  f"Got {duplicates!r}.")
    if timestamp is not None and len(timestamp) > 1 and np.all(np.asarray(timestamp) == timestamp[0]):
        log.warning("Every timestamp in the log is the same (%s): they carry no order, so the log is treated "
                    "as untimed (random holdout instead of the latest interactions).", timestamp[0])
        timestamp = None
    user_codes, user_ids = _id_codes(users)
    item_codes, item_ids = _id_codes(items)
    if catalog == "metadata":
        extra = ids_as_str(item_metadata["item"]).dropna().astype(str).to_numpy(dtype=object)
        all_ids = np.unique(np.concatenate([np.asarray(item_ids, dtype=object), extra]))
        if len(all_ids) > len(item_ids):
            log.info("catalog='metadata': %d item(s) of item_metadata have no interactions.",
                     len(all_ids) - len(item_ids))
            item_codes = np.searchsorted(all_ids, np.asarray(item_ids, dtype=object))[item_codes]
            item_ids = all_ids
    weight = np.ones(len(user_codes)) if weight is None else np.asarray(weight, dtype=np.float64)
    timestamp = None if timestamp is None else np.asarray(timestamp, dtype=np.int64)
    n_before = len(user_codes)
    if duplicates == "last":
        u, i, w, t = _keep_last(user_codes, item_codes, weight, timestamp, seed)
    else:
        u, i, w, t = _combine(user_codes, item_codes, len(item_ids), weight, timestamp, duplicates)
    if len(u) < n_before:
        log.info("Combined %d duplicate (user, item) rows with duplicates=%r.", n_before - len(u), duplicates)
    item_map = IdMap(item_ids)
    return Interactions(
        users=IdMap(user_ids), items=item_map,
        user_index=u.astype(np.int32), item_index=i.astype(np.int32), weight=w.astype(np.float32),
        timestamp=t,
        item_metadata=align_item_metadata(item_metadata, item_map),
    )


def _combine(users: np.ndarray, items: np.ndarray, n_items: int, weight: np.ndarray, timestamp: np.ndarray | None,
             how: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One row per (user, item), sorted by (user, item): weights summed ('sum') or their max ('max'), the latest
    timestamp. In numpy on one int64 key per row: lean at tens of millions of rows."""
    key = users.astype(np.int64) * n_items + items
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    weight = weight[order]
    timestamp = None if timestamp is None else timestamp[order]
    if len(starts) < len(key):
        weight = (np.add if how == "sum" else np.maximum).reduceat(weight, starts)
        timestamp = None if timestamp is None else np.maximum.reduceat(timestamp, starts)
        key = key[starts]
    return key // n_items, key % n_items, weight, timestamp


def _keep_last(users: np.ndarray, items: np.ndarray, weight: np.ndarray, timestamp: np.ndarray | None, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One row per (user, item), sorted by (user, item): the latest row (ties in time in a seeded random
    order; file order in an untimed log)."""
    frame = pd.DataFrame({"u": users, "i": items, "w": weight, "order": np.arange(len(users))})
    if timestamp is not None:  # rows at the same time in a seeded random order
        frame["t"] = timestamp
        frame["order"] = np.random.default_rng(seed).permutation(len(frame))
    sort_cols = ["t", "order"] if timestamp is not None else ["order"]
    frame = frame.sort_values(sort_cols, kind="stable").drop_duplicates(["u", "i"], keep="last")
    frame = frame.sort_values(["u", "i"], kind="stable")
    return (frame["u"].to_numpy(), frame["i"].to_numpy(), frame["w"].to_numpy(),
            frame["t"].to_numpy() if timestamp is not None else None)


def _check_catalog(catalog: str, item_metadata: pd.DataFrame | None) -> None:
    if catalog not in ("interactions", "metadata"):
        raise DataValidationError(f"The 'catalog' parameter must be 'interactions' or 'metadata'. Got {catalog!r}.")
    if catalog == "metadata":
        if item_metadata is None:
            raise DataValidationError("catalog='metadata' needs item_metadata: the frame of catalogue items.")
        _require_item_column(item_metadata)


def _require_item_column(metadata: pd.DataFrame) -> None:
    if "item" not in metadata.columns:
        raise DataValidationError(f"Item metadata needs an 'item' column. Got columns {list(metadata.columns)}.")


TITLE_GUESSES = ("title", "name", "product_name", "item_name", "display_name", "product_title", "label")


def with_title(metadata: pd.DataFrame | None, title_col: str | None = None) -> pd.DataFrame | None:
    """`metadata` with a 'title' column, the one answers show for each item: a copy of `title_col`, or of the
    first column whose name (any case) is in `TITLE_GUESSES`; unchanged when there is none (titles are then
    null) or when 'title' is already there and no other column is asked for.

    >>> with_title(pd.DataFrame({"item": ["a"], "Product_Name": ["Red shoe"]}))["title"].tolist()
    ['Red shoe']
    """
    if metadata is None:
        return None
    if title_col is not None:
        if title_col not in metadata.columns:
            raise DataValidationError(f"Title column {title_col!r} (title_col, CLI --title-col) not found in the "
                                      f"item metadata. Available columns: {list(metadata.columns)}.")
        return metadata.assign(title=metadata[title_col])
    if "title" in metadata.columns:
        return metadata
    lower = {str(c).lower(): c for c in metadata.columns}
    guess = next((lower[g] for g in TITLE_GUESSES if g in lower), None)
    if guess is None:
        return metadata
    log.info("Item titles: column %r (pass title_col / --title-col to choose another).", guess)
    return metadata.assign(title=metadata[guess])


def align_item_metadata(metadata: pd.DataFrame | None, items: IdMap) -> pd.DataFrame | None:
    """Reorder an item frame (with an `item` column) so that row i describes item index i."""
    if metadata is None:
        return None
    _require_item_column(metadata)
    meta = metadata.assign(item=ids_as_str(metadata["item"])).drop_duplicates("item").set_index("item")
    return meta.reindex(pd.Index(items.ids, name="item")).reset_index()


# ---------------------------------------------------------------------------------------------- splits
# Interactions are stored sorted by (user, item), so storage order is id order. Every order by time breaks ties
# with a seeded random draw instead: otherwise "latest" would mean "largest item id" on day-granular logs.
TIE_BREAK = "seeded random draw"


def tie_share(inter: Interactions) -> float:
    """Share of interactions whose timestamp equals that of another interaction of the same user (0 untimed)."""
    if inter.timestamp is None or inter.nnz == 0:
        return 0.0
    order = np.lexsort((inter.timestamp, inter.user_index))
    u, t = inter.user_index[order], inter.timestamp[order]
    same = (u[1:] == u[:-1]) & (t[1:] == t[:-1])
    tied = np.zeros(inter.nnz, dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    return float(tied.mean())


def _time_order_key(inter: Interactions, seed: int) -> np.ndarray:
    """A float key that orders rows by timestamp, ties in a seeded random order (never by id)."""
    noise = np.random.default_rng(seed).random(inter.nnz)
    ranks = np.lexsort((noise, inter.timestamp))
    key = np.empty(inter.nnz, dtype=np.float64)
    key[ranks] = np.arange(inter.nnz)
    return key


def user_histories(inter: Interactions, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each user's items in the order they were used, as (indptr, items): user u's history, oldest first, is
    items[indptr[u]:indptr[u + 1]] (item indices; a repeated pair appears once, `Interactions` hold one row per
    pair). Timestamps order the rows, ties by the seeded random draw the splits use (never by id); an untimed log
    keeps its row order, which for `Interactions` built by `from_arrays` is item index order within a user."""
    order, indptr = _history_order(inter, seed)
    return indptr, inter.item_index[order].astype(np.int64)


def time_ordered_matrix(inter: Interactions, seed: int = 0) -> sp.csr_matrix:
    """`inter.matrix()` with each row's entries in `user_histories` order (oldest first) instead of by item index:
    what a sequence model's bundle stores as the users' seen items, so that a known user's history folds in in
    order. A log holding a pair twice gets `matrix()` (summed, by item index)."""
    order, indptr = _history_order(inter, seed)
    canonical = inter.matrix()
    if canonical.nnz != inter.nnz:  # a pair held twice: summed, by item index
        return canonical
    return sp.csr_matrix((inter.weight[order].astype(np.float32), inter.item_index[order], indptr),
                         shape=(inter.n_users, inter.n_items))


def _history_order(inter: Interactions, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`_user_order` by time (ties by the seeded draw; untimed: row order)."""
    key = np.arange(inter.nnz, dtype=np.float64) if inter.timestamp is None else _time_order_key(inter, seed)
    return _user_order(inter, key)


def _user_order(inter: Interactions, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the rows' order by user, then `key`; the users' CSR indptr into that order)."""
    indptr = np.zeros(inter.n_users + 1, np.int64)
    np.cumsum(np.bincount(inter.user_index, minlength=inter.n_users), out=indptr[1:])
    return np.lexsort((key, inter.user_index)), indptr


def _per_user_rank(inter: Interactions, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row: its 0-based position within its user when ordered by `key`, and the user's row count."""
    order, indptr = _user_order(inter, key)
    rank = np.empty(inter.nnz, dtype=np.int64)
    rank[order] = np.arange(inter.nnz) - indptr[inter.user_index[order]]
    return rank, np.diff(indptr)[inter.user_index]


def _holdout(inter: Interactions, key: np.ndarray, test_fraction: float | None, test_k: int | None,
             min_train: int) -> tuple[Interactions, Interactions]:
    if (test_fraction is None) == (test_k is None):
        raise DataValidationError("Pass exactly one of test_fraction (e.g. 0.2) or test_k (e.g. 1).")
    _check_fraction(test_fraction)
    if test_k is not None and (int(test_k) != test_k or test_k < 1):
        raise DataValidationError(f"The 'test_k' parameter must be an int >= 1. Got {test_k}.")
    rank, count = _per_user_rank(inter, key)
    n_test = np.round(count * test_fraction).astype(np.int64) if test_k is None else np.full_like(count, test_k)
    n_test = np.clip(np.minimum(n_test, count - min_train), 0, None)
    is_test = rank >= count - n_test
    return inter.subset(~is_test), inter.subset(is_test)


def _check_fraction(test_fraction: float | None) -> None:
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise DataValidationError(f"The 'test_fraction' parameter must be a float in (0, 1). Got {test_fraction}.")


def random_split(inter: Interactions, test_fraction: float | None = 0.2, *, test_k: int | None = None,
                 seed: int = 0, min_train: int = 1) -> tuple[Interactions, Interactions]:
    """Per user, a random `test_fraction` (or `test_k`) of their items go to test; `min_train` stay in train."""
    key = np.random.default_rng(seed).random(inter.nnz)
    return _holdout(inter, key, test_fraction, test_k, min_train)


def temporal_split(inter: Interactions, test_fraction: float | None = 0.2, *, test_k: int | None = None,
                   min_train: int = 1, seed: int = 0) -> tuple[Interactions, Interactions]:
    """Per user, their latest `test_fraction` (or last `test_k`) interactions go to test.

    Interactions at the same time are ordered by a random draw seeded by `seed`, never by id."""
    if inter.timestamp is None:
        raise DataValidationError("temporal_split needs timestamps: read the log with time_col=<column>.")
    return _holdout(inter, _time_order_key(inter, seed), test_fraction, test_k, min_train)


def leave_last_out(inter: Interactions, *, seed: int = 0) -> tuple[Interactions, Interactions, Interactions]:
    """(train, validation, test): per user, the last interaction in time is test and the one before it validation
    (the split sequential models are judged on, beside the temporal 80/20); users with fewer than three keep them
    all in train. Ties in time are ordered by the random draw seeded by `seed` that `temporal_split` uses."""
    if inter.timestamp is None:
        raise DataValidationError("leave_last_out needs timestamps: read the log with time_col=<column>.")
    rank, count = _per_user_rank(inter, _time_order_key(inter, seed))
    held = count >= 3
    test, validation = held & (rank == count - 1), held & (rank == count - 2)
    return inter.subset(~(test | validation)), inter.subset(validation), inter.subset(test)


def holdout(inter: Interactions, test_fraction: float, seed: int = 0) -> tuple[Interactions, Interactions]:
    """Each user's latest `test_fraction` (ties in time in a random order seeded by `seed`), or a random
    `test_fraction` per user when the log has no timestamps (the split `recsys train` and `recsys.tuning` use)."""
    if inter.timestamp is not None:
        return temporal_split(inter, test_fraction, seed=seed)
    log.warning("The log has no timestamps: holding out a random %.0f%% per user.", 100 * test_fraction)
    return random_split(inter, test_fraction, seed=seed)


def time_split(inter: Interactions, cutoff: str | pd.Timestamp | int | None = None, *,
               test_fraction: float | None = None, seed: int = 0) -> tuple[Interactions, Interactions]:
    """Global time cut: interactions at or after `cutoff` go to test (cold users/items may appear there).

    Or `test_fraction`: the latest fraction of all interactions go to test, those tied at the cut chosen by a
    random draw seeded by `seed` (never by id)."""
    if inter.timestamp is None:
        raise DataValidationError("time_split needs timestamps: read the log with time_col=<column>.")
    if (cutoff is None) == (test_fraction is None):
        raise DataValidationError("Pass exactly one of cutoff (a date or Unix seconds) or test_fraction (e.g. 0.2).")
    if test_fraction is not None:
        _check_fraction(test_fraction)
        is_test = _time_order_key(inter, seed) >= inter.nnz - round(inter.nnz * test_fraction)
        return inter.subset(~is_test), inter.subset(is_test)
    if not isinstance(cutoff, (int, np.integer)):
        cutoff = int(pd.Timestamp(cutoff, tz="UTC").timestamp()) if pd.Timestamp(cutoff).tzinfo is None \
            else int(pd.Timestamp(cutoff).timestamp())
    is_test = inter.timestamp >= cutoff
    return inter.subset(~is_test), inter.subset(is_test)


def is_missing(value: object) -> bool:
    """None, NaN, NaT, pandas' <NA>, and the text a bundle's metadata stores for them ('nan', '<NA>')."""
    if value is None:
        return True
    if isinstance(value, str):
        return value in ("<NA>", "nan")
    return bool(pd.api.types.is_scalar(value) and pd.isna(value))
