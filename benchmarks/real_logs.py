"""Loaders for the real interaction logs of ../shared/datasets (benchmarks/quality.py --real).

One small function per log, each returning a recsys `Interactions` read by `recsys.data.read_interactions`
(string ids). The files are read in place, never copied into the project: most have no redistribution licence.
Formats and counts are in each folder's PROVENANCE.md / README.md; the choices made here:

  movielens     ml-latest-small ratings.csv (+ movies.csv as item metadata, as `recsys train` reads it);
                rating as weight, timestamps in seconds.
  ciao          Tang's Ciao .mat, columns user, product, category, rating, helpfulness, time (Unix s, day
                granularity); rating as weight (the 34 zero ratings read as 1), repeated (user, item) rows
                keep their highest rating.
  epinions      the same layout; read UNTIMED (its time column holds 11 coarse periods, not times).
  bookcrossing  book_history.dat of the caserec zip: implicit history, binary, untimed (the explicit ratings
                cover a subset of it and are not used).
  retailrocket  the three event files of the caserec zip (view, add to cart, purchase), all read as implicit
                interactions weighted 1 / 2 / 3 by event type, repeated (user, item) events summed; untimed.
  diginetica    SR-GNN's sample of train-item-views: sessions as users, item views (repeats summed into a
                count), time = eventdate + the millisecond offset within the session (read at one-second
                resolution, ties broken by the split).

`max_users` keeps the first N users in file order (the smoke run's tiny logs).
"""
from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data import Interactions, read_interactions
from recsys.datasets import read_movielens

log = logging.getLogger("benchmarks.quality")

DEFAULT_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
RETAILROCKET_EVENTS = {"view_ecommerce.dat": 1.0, "add_to_cart_ecommerce.dat": 2.0, "purchase_ecommerce.dat": 3.0}


class MissingLog(FileNotFoundError):
    """The log's folder or file is not under the datasets directory."""


def _first_users(frame: pd.DataFrame, user_col: str, max_users: int | None) -> pd.DataFrame:
    if max_users is None:
        return frame
    return frame[frame[user_col].isin(pd.unique(frame[user_col])[:max_users])]


def _require(path: Path) -> Path:
    if not path.exists():
        raise MissingLog(f"{path} not found")
    return path


def _zip_member(archive: zipfile.ZipFile, basename: str) -> str:
    """The archive's member named `basename`, in whatever folder the zip keeps it."""
    found = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == basename]
    if not found:
        raise MissingLog(f"{basename} not in {archive.filename}")
    return found[0]


def _read_tsv(archive: zipfile.ZipFile, basename: str) -> pd.DataFrame:
    with archive.open(_zip_member(archive, basename)) as f:
        return pd.read_csv(io.TextIOWrapper(f, encoding="utf-8"), sep="\t", dtype=str)


def _tang_frame(path: Path) -> pd.DataFrame:
    from scipy.io import loadmat

    rating = loadmat(str(_require(path)))["rating"]
    return pd.DataFrame(np.asarray(rating, dtype=np.int64),
                        columns=["user", "item", "category", "rating", "helpfulness", "time"])


def movielens(root: Path, max_users: int | None = None) -> Interactions:
    ds = read_movielens(_require(root / "ml-latest-small" / "ratings.csv").parent, name="ml-latest-small")
    frame = _first_users(ds.interactions, "user", max_users)
    return read_interactions(frame, user_col="user", item_col="item", weight_col="rating", time_col="timestamp",
                             item_metadata=ds.items)


def ciao(root: Path, max_users: int | None = None) -> Interactions:
    frame = _first_users(_tang_frame(root / "ciao-tang" / "ciao_rating_with_timestamp.mat"), "user", max_users)
    frame = frame.assign(rating=frame["rating"].clip(lower=1))
    return read_interactions(frame, user_col="user", item_col="item", weight_col="rating", time_col="time",
                             duplicates="max")


def epinions(root: Path, max_users: int | None = None) -> Interactions:
    frame = _first_users(_tang_frame(root / "epinions-tang" / "epinions_rating_with_timestamp.mat"), "user",
                         max_users)
    frame = frame.assign(rating=frame["rating"].clip(lower=1))
    return read_interactions(frame, user_col="user", item_col="item", weight_col="rating", duplicates="max")


def bookcrossing(root: Path, max_users: int | None = None) -> Interactions:
    with zipfile.ZipFile(_require(root / "bookcrossing-caserec" / "book_crossing.zip")) as archive:
        frame = _read_tsv(archive, "book_history.dat")
    return read_interactions(_first_users(frame, "user", max_users), user_col="user", item_col="item")


def retailrocket(root: Path, max_users: int | None = None) -> Interactions:
    with zipfile.ZipFile(_require(root / "retailrocket-caserec" / "Retailrocket_Ecommerce.zip")) as archive:
        frame = pd.concat([_read_tsv(archive, name).assign(weight=w) for name, w in RETAILROCKET_EVENTS.items()],
                          ignore_index=True)
    frame = _first_users(frame, "visitorid", max_users)
    return read_interactions(frame, user_col="visitorid", item_col="itemid", weight_col="weight")


def diginetica(root: Path, max_users: int | None = None) -> Interactions:
    path = _require(root / "diginetica-sample-srgnn" / "sample_train-item-views.csv")
    frame = _first_users(pd.read_csv(path, sep=";", dtype={"session_id": str, "item_id": str}), "session_id",
                         max_users)
    when = pd.to_datetime(frame["eventdate"], utc=True) + pd.to_timedelta(frame["timeframe"], unit="ms")
    return read_interactions(frame.assign(time=when), user_col="session_id", item_col="item_id", time_col="time")


@dataclass(frozen=True)
class RealLog:
    key: str                   # for --logs
    name: str                  # what the table shows
    folder: str                # under the datasets directory
    weights: str               # how the weight column was read
    timed: bool
    load: Callable[[Path, int | None], Interactions]


REAL_LOGS: tuple[RealLog, ...] = (
    RealLog("movielens", "MovieLens ml-latest-small", "ml-latest-small", "rating", True, movielens),
    RealLog("ciao", "Ciao product reviews", "ciao-tang", "rating", True, ciao),
    RealLog("epinions", "Epinions product reviews", "epinions-tang", "rating", False, epinions),
    RealLog("bookcrossing", "Book-Crossing history", "bookcrossing-caserec", "binary", False, bookcrossing),
    RealLog("retailrocket", "Retailrocket e-commerce events", "retailrocket-caserec", "event type 1/2/3 (summed)",
            False, retailrocket),
    RealLog("diginetica", "DIGINETICA session views (sample)", "diginetica-sample-srgnn", "view count", True,
            diginetica),
)
REAL_KEYS: tuple[str, ...] = tuple(r.key for r in REAL_LOGS)


def load(key: str, root: Path, max_users: int | None = None) -> tuple[RealLog, Interactions]:
    """The log named `key` read from `root`; MissingLog when its folder or file is not there."""
    spec = next(r for r in REAL_LOGS if r.key == key)
    if not (root / spec.folder).is_dir():
        raise MissingLog(f"{root / spec.folder} not found")
    inter = spec.load(root, max_users)
    log.info("%s: %d interactions, %d users x %d items%s", spec.name, inter.nnz, inter.n_users, inter.n_items,
             "" if inter.timestamp is not None else ", untimed")
    return spec, inter
