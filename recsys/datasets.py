"""Interaction datasets: the bundled MovieLens copy, the other MovieLens releases, and synthetic logs.

Every loader returns a :class:`Dataset` with two frames of fixed dtypes:

``interactions`` (one row per rating, in source order; make_synthetic sorts by user then time)
    ``user``       ``string`` (``pd.StringDtype()``), ids are strings such as ``"1"``
    ``item``       ``string``
    ``rating``     ``float32``
    ``timestamp``  ``datetime64[ns, UTC]``

``items`` (one row per item, in source order)
    ``item``       ``string``
    ``title``      ``string``
    ``genres``     ``object``, a ``list[str]`` per row (``"(no genres listed)"`` becomes ``[]``)
    ``tags``       ``object``, a sorted ``list[str]`` of unique lowercase tags per row (``[]`` if none)
    ``year``       ``Int64`` (nullable), parsed from a trailing ``"(1995)"`` in the title

Every item in ``interactions`` appears in ``items`` (loaders raise DataValidationError otherwise).
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import io
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from recsys.exceptions import DataValidationError, DownloadError
from recsys.retrieval.exact import normalise

logger = logging.getLogger(__name__)  # "recsys.datasets", a child of the "recsys" logger

ID_DTYPE = pd.StringDtype()
TIMESTAMP_DTYPE = "datetime64[ns, UTC]"
INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp")
ITEM_COLUMNS = ("item", "title", "genres", "tags", "year")

BUNDLED_NAME = "ml-latest-small"
_YEAR_RE = r"\((\d{4})\)\s*$"
_NO_GENRES = {"(no genres listed)", "unknown"}  # "unknown" is ml-100k's "no genre" flag


class Archive(NamedTuple):
    url: str
    size: int | None
    sha256: str | None


_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"

# Sizes (bytes) and sha256 of the GroupLens zips, from tensorflow/datasets
# tensorflow_datasets/url_checksums/movielens.txt (commit 1c076ac3c19c8ea83e1d1a75e0623c9a699e0d7c);
# each sha256 is also pinned, unchanged, by several unrelated public projects.
KNOWN_ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive(
        _GROUPLENS + "ml-100k.zip", 4_924_029,
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    ),
    "ml-1m": Archive(
        _GROUPLENS + "ml-1m.zip", 5_917_549,
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    ),
    "ml-20m": Archive(
        _GROUPLENS + "ml-20m.zip", 198_702_078,
        "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
    ),
    "ml-25m": Archive(
        _GROUPLENS + "ml-25m.zip", 261_978_986,
        "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
    ),
    "ml-latest-small": Archive(
        _GROUPLENS + "ml-latest-small.zip", 978_202,
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    ),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """An interaction log plus its item table (column dtypes in the module docstring)."""

    name: str
    interactions: pd.DataFrame = field(repr=False)
    items: pd.DataFrame = field(repr=False)

    def __post_init__(self) -> None:
        for frame_name, frame, required in (
            ("interactions", self.interactions, INTERACTION_COLUMNS),
            ("items", self.items, ITEM_COLUMNS),
        ):
            missing = [c for c in required if c not in frame.columns]
            if missing:
                raise DataValidationError(
                    f"Dataset {self.name!r}: {frame_name} frame lacks column(s) {missing}; "
                    f"it has {list(frame.columns)}. Provide columns {list(required)}."
                )

    def __repr__(self) -> str:
        return f"Dataset(name={self.name!r}, interactions={len(self.interactions)}, items={len(self.items)})"


# --------------------------------------------------------------------------------------------------
# Locations


def bundled_dir() -> Path:
    """The folder of the bundled ml-latest-small copy.

    Looks in ``$RECSYS_DATASETS_DIR/ml-latest-small`` first, then ``<repo root>/datasets/ml-latest-small``.
    """
    candidates = []
    env = os.environ.get("RECSYS_DATASETS_DIR")
    if env:
        candidates.append(Path(env).expanduser() / BUNDLED_NAME)
    candidates.append(Path(__file__).resolve().parents[1] / "datasets" / BUNDLED_NAME)
    for path in candidates:
        if (path / "ratings.csv").is_file():
            return path
        if env and path == candidates[0]:
            logger.warning("RECSYS_DATASETS_DIR=%s has no %s/ratings.csv; trying the repo copy", env, BUNDLED_NAME)
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"bundled MovieLens {BUNDLED_NAME} not found (tried: {tried}). Set RECSYS_DATASETS_DIR to a "
        f"folder that contains {BUNDLED_NAME}/ (with ratings.csv and movies.csv), or restore datasets/ "
        "in the repository."
    )


def cache_dir(data_home: str | Path | None = None) -> Path:
    """The download cache: ``data_home``, else ``$RECSYS_DATA_HOME``, else ``~/.cache/recsys``."""
    if data_home is None:
        data_home = os.environ.get("RECSYS_DATA_HOME") or Path.home() / ".cache" / "recsys"
    return Path(data_home).expanduser()


# --------------------------------------------------------------------------------------------------
# Loading


def load_movielens(
    name: str = BUNDLED_NAME, data_home: str | Path | None = None, download: bool = False
) -> Dataset:
    """Load a MovieLens release as a :class:`Dataset`.

    ``ml-latest-small`` is read from :func:`bundled_dir`. ``ml-100k``, ``ml-1m``, ``ml-20m`` and ``ml-25m``
    are read from ``<cache>/<name>/`` (see :func:`cache_dir`); when missing they are fetched with
    :func:`fetch_movielens` if ``download`` is true, else FileNotFoundError is raised.
    """
    if name == BUNDLED_NAME:
        return read_movielens(bundled_dir(), name=name)
    if name not in KNOWN_ARCHIVES:
        raise ValueError(
            f"unknown MovieLens release name={name!r}; use one of {sorted(KNOWN_ARCHIVES)}, "
            "or read_movielens(path) for a folder you unpacked yourself."
        )
    folder = cache_dir(data_home) / name
    if not folder.is_dir():
        if not download:
            raise FileNotFoundError(
                f"MovieLens {name} is not in the cache ({folder}). Pass download=True to fetch it "
                f"from {KNOWN_ARCHIVES[name].url}, or unzip it there yourself."
            )
        folder = fetch_movielens(name, data_home)
    return read_movielens(folder, name=name)


def read_movielens(path: str | Path, name: str | None = None) -> Dataset:
    """Read an unpacked MovieLens folder, detecting its layout.

    ``u.data``/``u.item``/``u.genre`` (ml-100k), ``ratings.dat``/``movies.dat`` (ml-1m), or
    ``ratings.csv``/``movies.csv``/optional ``tags.csv`` (ml-latest-small, ml-20m, ml-25m).
    """
    folder = Path(path)
    name = name or folder.name
    if (folder / "u.data").is_file():
        ratings, movies, tags = _read_100k(folder)
    elif (folder / "ratings.dat").is_file():
        ratings, movies, tags = _read_1m(folder)
    elif (folder / "ratings.csv").is_file():
        ratings, movies, tags = _read_csv_layout(folder)
    else:
        raise FileNotFoundError(
            f"{folder} holds no MovieLens ratings file (looked for u.data, ratings.dat, ratings.csv). "
            "Point it at the unpacked release folder."
        )
    logger.info("read %s: %d ratings, %d items from %s", name, len(ratings), len(movies), folder)
    return _build(name, ratings, movies, tags)


def _read_100k(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, None]:
    ratings = pd.read_csv(
        folder / "u.data", sep="\t", header=None, names=["user", "item", "rating", "timestamp"],
        dtype={"user": ID_DTYPE, "item": ID_DTYPE, "rating": "float32", "timestamp": "int64"},
    )
    genre_table = pd.read_csv(
        folder / "u.genre", sep="|", header=None, names=["genre", "index"], encoding="latin-1"
    ).dropna()
    genre_names = genre_table.sort_values("index")["genre"].tolist()
    fixed = ["item", "title", "release_date", "video_release_date", "imdb_url"]
    raw = pd.read_csv(
        folder / "u.item", sep="|", header=None, names=fixed + genre_names, encoding="latin-1",
        quoting=csv.QUOTE_NONE, dtype={"item": ID_DTYPE, "title": ID_DTYPE},
    )
    flags = raw[genre_names].fillna(0).to_numpy(dtype=bool)
    genres = ["|".join(g for g, on in zip(genre_names, row) if on) for row in flags]
    movies = pd.DataFrame({"item": raw["item"], "title": raw["title"], "genres": genres})
    return ratings, movies, None


def _read_double_colon(path: Path, names: list[str], dtype: dict[str, object]) -> pd.DataFrame:
    """Read ml-1m's ``::``-separated, latin-1 files with the fast C parser (``::`` becomes a tab)."""
    text = path.read_bytes().decode("latin-1").replace("::", "\t")
    return pd.read_csv(
        io.StringIO(text), sep="\t", header=None, names=names, dtype=dtype, quoting=csv.QUOTE_NONE
    )


def _read_1m(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, None]:
    ratings = _read_double_colon(
        folder / "ratings.dat", ["user", "item", "rating", "timestamp"],
        {"user": ID_DTYPE, "item": ID_DTYPE, "rating": "float32", "timestamp": "int64"},
    )
    movies = _read_double_colon(
        folder / "movies.dat", ["item", "title", "genres"],
        {"item": ID_DTYPE, "title": ID_DTYPE, "genres": ID_DTYPE},
    )
    return ratings, movies, None


def _read_csv_layout(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    ratings = _read_csv(
        folder / "ratings.csv",
        {"userId": ID_DTYPE, "movieId": ID_DTYPE, "rating": "float32", "timestamp": "int64"},
        engine="pyarrow",
    ).rename(columns={"userId": "user", "movieId": "item"})
    movies = _read_csv(
        folder / "movies.csv", {"movieId": ID_DTYPE, "title": ID_DTYPE, "genres": ID_DTYPE}
    ).rename(columns={"movieId": "item"})
    tags = None
    if (folder / "tags.csv").is_file():
        tags = _read_csv(folder / "tags.csv", {"movieId": ID_DTYPE, "tag": ID_DTYPE})
        tags = tags.rename(columns={"movieId": "item"})[["item", "tag"]]
    return ratings, movies, tags


def _read_csv(path: Path, dtype: dict[str, object], engine: str = "c") -> pd.DataFrame:
    header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in dtype if c not in header]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {missing} (header is {list(header)}); "
            "expected the MovieLens CSV layout."
        )
    return pd.read_csv(path, usecols=list(dtype), dtype=dtype, engine=engine)


def _build(
    name: str, ratings: pd.DataFrame, movies: pd.DataFrame, tags: pd.DataFrame | None
) -> Dataset:
    """Turn raw (user, item, rating, unix-seconds) and (item, title, "A|B" genres) frames into a Dataset."""
    if ratings["rating"].isna().any() or ratings["timestamp"].isna().any():
        raise DataValidationError(f"{name}: ratings have empty rating or timestamp cells; fix the file.")
    interactions = pd.DataFrame({
        "user": ratings["user"].astype(ID_DTYPE),
        "item": ratings["item"].astype(ID_DTYPE),
        "rating": ratings["rating"].astype("float32"),
        "timestamp": _to_utc(ratings["timestamp"]),
    })

    title = movies["title"].astype(ID_DTYPE).str.strip()
    items = pd.DataFrame({
        "item": movies["item"].astype(ID_DTYPE),
        "title": title,
        "genres": [_split_genres(g) for g in movies["genres"].fillna("")],
        "tags": _tags_per_item(movies["item"], tags),
        "year": pd.to_numeric(title.str.extract(_YEAR_RE, expand=False), errors="coerce").astype("Int64"),
    })
    if items["item"].duplicated().any():
        dup = items.loc[items["item"].duplicated(), "item"].head(5).tolist()
        raise DataValidationError(f"{name}: item ids repeat in the item table, e.g. {dup}; deduplicate it.")
    unknown = pd.Index(interactions["item"].unique()).difference(pd.Index(items["item"]))
    if len(unknown):
        raise DataValidationError(
            f"{name}: {len(unknown)} rated item(s) are missing from the item table, e.g. "
            f"{unknown[:5].tolist()}; add them to the movies file."
        )
    return Dataset(name=name, interactions=interactions, items=items)


def _to_utc(seconds: pd.Series) -> pd.Series:
    return pd.to_datetime(seconds.astype("int64"), unit="s", utc=True).astype(TIMESTAMP_DTYPE)


def _split_genres(text: str) -> list[str]:
    return [g for g in text.split("|") if g and g not in _NO_GENRES]


def _tags_per_item(item_ids: pd.Series, tags: pd.DataFrame | None) -> list[list[str]]:
    if tags is None or tags.empty:
        return [[] for _ in range(len(item_ids))]
    clean = tags.assign(tag=tags["tag"].str.strip().str.lower()).dropna()
    clean = clean[clean["tag"] != ""].drop_duplicates()
    grouped = clean.groupby("item")["tag"].agg(lambda s: sorted(s))
    lookup = grouped.to_dict()
    return [lookup.get(item, []) for item in item_ids]


# --------------------------------------------------------------------------------------------------
# Download


def fetch_movielens(
    name: str,
    data_home: str | Path | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 60,
    progress: bool = False,
) -> Path:
    """Download and unpack a GroupLens MovieLens zip into ``<cache>/<name>/`` and return that folder.

    The zip streams into a temporary file in the cache, is checked against the expected byte size and
    sha256 (``url``/``sha256``/``size`` override the :data:`KNOWN_ARCHIVES` entry one by one), is unpacked
    into a temporary folder in the cache and renamed into place. Any failure raises DownloadError and
    leaves neither a dataset folder nor temporary files behind. An existing folder is returned as is.
    ``progress=True`` shows a tqdm bar on stderr.
    """
    known = KNOWN_ARCHIVES.get(name)
    if known is None:
        if url is None:
            raise ValueError(
                f"unknown MovieLens release name={name!r}; use one of {sorted(KNOWN_ARCHIVES)} or pass url=."
            )
        known = Archive(url, None, None)
    url = url or known.url
    size = known.size if size is None else size
    sha256 = (sha256 or known.sha256 or "").lower() or None
    if sha256 is None:
        logger.warning("no sha256 known for %s (%s): the download is not checksum-verified", name, url)
    if size is None:
        logger.warning("no size known for %s (%s): the download is not size-verified", name, url)

    cache = cache_dir(data_home)
    target = cache / name
    if target.is_dir():
        logger.info("%s already in %s; not downloading", name, target)
        return target
    cache.mkdir(parents=True, exist_ok=True)

    fd, part_name = tempfile.mkstemp(prefix=f".{name}-", suffix=".zip.part", dir=cache)
    part = Path(part_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual_size, actual_sha = _stream(url, out, size, timeout, progress, target)
        _verify(url, name, size, actual_size, sha256, actual_sha)
        return _unpack(part, cache, target, url)
    finally:
        part.unlink(missing_ok=True)


def _stream(
    url: str, out: io.BufferedWriter, size: int | None, timeout: float, progress: bool, target: Path
) -> tuple[int, str]:
    """Copy ``url`` into ``out``; return (bytes written, sha256 hex). ``target`` is for messages."""
    name = target.name
    digest = hashlib.sha256()
    written = 0
    logger.info("downloading %s (%s bytes) from %s", name, size if size is not None else "unknown", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            total = int(announced) if announced and announced.isdigit() else size
            if size is not None and announced and announced.isdigit() and int(announced) != size:
                raise DownloadError(
                    f"download of {url} announced {announced} bytes but {size} bytes are expected; "
                    "the server holds a different file. Check the url, or pass size=/sha256= for it."
                )
            bar = _progress_bar(total, name) if progress else None
            try:
                while chunk := response.read(1 << 20):
                    written += len(chunk)
                    if size is not None and written > size:
                        raise DownloadError(
                            f"download of {url} exceeded the expected size of {size} bytes "
                            f"(got at least {written}); check the url, or pass the right size=."
                        )
                    digest.update(chunk)
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:  # incl. short reads
        raise DownloadError(
            f"could not download {url} ({type(exc).__name__}: {exc}) after {written} bytes; "
            f"check the network and retry, or download the zip yourself and unzip it so {target}/ "
            "holds its files."
        ) from exc
    logger.info("downloaded %d bytes of %s", written, name)
    return written, digest.hexdigest()


def _progress_bar(total: int | None, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=name)


def _verify(
    url: str, name: str, size: int | None, actual_size: int, sha256: str | None, actual_sha: str
) -> None:
    if size is not None and actual_size != size:
        raise DownloadError(
            f"download of {url} is {actual_size} bytes, expected {size}: it was cut short or the file "
            f"changed. Retry; if GroupLens changed {name}, pass size=/sha256= for the new file."
        )
    if sha256 is not None and actual_sha != sha256:
        raise DownloadError(
            f"download of {url} has sha256 {actual_sha}, expected {sha256}: the file is corrupt or "
            f"changed. Retry; if GroupLens changed {name}, pass sha256= for the new file."
        )


def _unpack(archive: Path, cache: Path, target: Path, url: str) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".tmp", dir=cache))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    _check_member(member, url)
                zf.extractall(staging)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"download of {url} is not a valid zip ({exc}); retry the download.") from exc
        entries = list(staging.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        try:
            os.replace(root, target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process
                raise
            logger.info("%s was unpacked concurrently; keeping the existing copy", target)
        logger.info("unpacked %s into %s", url, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_member(member: str, url: str) -> None:
    normal = member.replace("\\", "/")
    if normal.startswith("/") or re.match(r"^[A-Za-z]:", normal) or ".." in PurePosixPath(normal).parts:
        raise DownloadError(
            f"zip from {url} has an unsafe member path {member!r} (absolute or with '..'); "
            "refusing to unpack it. Check the url points at a genuine MovieLens archive."
        )


# --------------------------------------------------------------------------------------------------
# Synthetic data


def make_synthetic(
    n_users: int = 1000,
    n_items: int = 500,
    n_factors: int = 8,
    interactions_per_user: float = 20,
    popularity_skew: float = 1.0,
    seed: int = 0,
    start: str = "2020-01-01",
    days: int = 365,
    *,
    temperature: float = 0.25,
) -> Dataset:
    """A random interaction log with planted latent structure, deterministic for ``seed``.

    Items fall into ``n_factors`` clusters (``items.genres == ["cluster<c>"]``) whose centres are orthonormal
    directions; each user prefers one cluster (latent vector near its centre). Item popularity follows a
    power law with exponent ``popularity_skew`` (0 = uniform), independent of the cluster. Each user rates
    about ``interactions_per_user`` distinct items, sampled without replacement with probability
    proportional to ``softmax(user . item / temperature) * popularity`` (Gumbel-top-k). Timestamps increase
    per user within ``[start, start + days)``, more likely items first; ratings (1-5) grow with affinity.
    Ids are zero-padded strings: ``"u0001"``, ``"i0001"``. The latent vectors are not returned: the item
    cluster is in ``genres`` and each user's preferred cluster is the one they interact with most.
    """
    if min(n_users, n_items, n_factors) < 1 or interactions_per_user < 1 or days < 1 or temperature <= 0:
        raise ValueError(
            "make_synthetic needs n_users, n_items, n_factors, interactions_per_user, days >= 1 and "
            f"temperature > 0 (got {n_users=}, {n_items=}, {n_factors=}, {interactions_per_user=}, "
            f"{days=}, {temperature=})."
        )
    rng = np.random.default_rng(seed)
    centres = _orthonormal_rows(rng, n_factors)
    item_cluster = rng.permutation(np.arange(n_items) % n_factors)
    user_cluster = rng.integers(n_factors, size=n_users)
    noise = 0.5 / np.sqrt(n_factors)  # spread around a centre: norm about 0.5 in any dimension
    item_vecs = normalise(centres[item_cluster] + noise * rng.standard_normal((n_items, n_factors)))
    user_vecs = normalise(centres[user_cluster] + noise * rng.standard_normal((n_users, n_factors)))
    log_pop = -popularity_skew * np.log1p(rng.permutation(n_items))  # power law over a random rank
    counts = np.minimum(1 + rng.poisson(interactions_per_user - 1, size=n_users), n_items)

    users, items = _sample_items(rng, user_vecs, item_vecs, log_pop, counts, temperature)
    affinity = np.einsum("ij,ij->i", user_vecs[users], item_vecs[items])
    rating = np.clip(np.rint(3 + 2.5 * affinity + 0.5 * rng.standard_normal(len(users))), 1, 5)
    seconds = _per_user_times(rng, counts, days)

    user_ids = _ids("u", n_users)
    item_ids = _ids("i", n_items)
    origin = pd.Timestamp(start, tz="UTC").as_unit("ns")
    interactions = pd.DataFrame({
        "user": user_ids.take(users),
        "item": item_ids.take(items),
        "rating": rating.astype("float32"),
        "timestamp": (origin + pd.to_timedelta(seconds, unit="s")).astype(TIMESTAMP_DTYPE),
    })
    catalogue = pd.DataFrame({
        "item": item_ids,
        "title": pd.array([f"Item {i}" for i in item_ids], dtype=ID_DTYPE),
        "genres": [[f"cluster{c}"] for c in item_cluster],
        "tags": [[] for _ in range(n_items)],
        "year": pd.array([pd.NA] * n_items, dtype="Int64"),
    })
    logger.info("synthetic log: %d users, %d items, %d interactions", n_users, n_items, len(interactions))
    return Dataset(name=f"synthetic-{seed}", interactions=interactions, items=catalogue)


def _orthonormal_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _ids(prefix: str, n: int) -> pd.api.extensions.ExtensionArray:
    width = max(4, len(str(n)))
    return pd.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=ID_DTYPE)


def _sample_items(
    rng: np.random.Generator,
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    log_pop: np.ndarray,
    counts: np.ndarray,
    temperature: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel-top-k per user, in chunks of users; returns (user index, item index) in draw order."""
    n_users, n_items = len(user_vecs), len(item_vecs)
    chunk = max(1, 2**24 // n_items)  # about 64 MB of float32 logits per chunk
    bias = log_pop.astype(np.float32)
    users_out, items_out = [], []
    for lo in range(0, n_users, chunk):
        hi = min(lo + chunk, n_users)
        logits = user_vecs[lo:hi] @ item_vecs.T
        logits /= np.float32(temperature)
        logits += bias
        noise = rng.standard_exponential(logits.shape, dtype=np.float32)
        np.log(np.maximum(noise, np.finfo(np.float32).tiny, out=noise), out=noise)
        logits -= noise  # -log(Exp(1)) is Gumbel noise
        k = counts[lo:hi]
        kmax = int(k.max())
        top = np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax] if kmax < n_items else (
            np.broadcast_to(np.arange(n_items), logits.shape)
        )
        order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
        ranked = np.take_along_axis(top, order, axis=1)
        keep = np.arange(kmax) < k[:, None]
        users_out.append(np.repeat(np.arange(lo, hi), k))
        items_out.append(ranked[keep])
    return np.concatenate(users_out), np.concatenate(items_out)


def _per_user_times(rng: np.random.Generator, counts: np.ndarray, days: int) -> np.ndarray:
    """Whole seconds since the start, non-decreasing within each user's run of ``counts`` rows."""
    window = days * 86_400
    begin = rng.uniform(0, 0.5 * window, size=len(counts))
    owner = np.repeat(np.arange(len(counts)), counts)
    offsets = begin[owner] + rng.uniform(0, 1, size=len(owner)) * (window - begin[owner])
    offsets = np.floor(offsets).astype(np.int64)
    return offsets[np.lexsort((offsets, owner))]
