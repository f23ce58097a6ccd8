"""Tests for recsys.datasets: bundled MovieLens, the per-release parsers, the downloader, synthetic logs."""
from __future__ import annotations

import hashlib
import io
import shutil
import threading
import time
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys import datasets
from recsys.datasets import (
    KNOWN_ARCHIVES,
    Archive,
    Dataset,
    bundled_dir,
    fetch_movielens,
    load_movielens,
    make_synthetic,
    read_movielens,
)
from recsys.exceptions import DataValidationError, DownloadError

INTERACTION_DTYPES = {
    "user": pd.StringDtype(),
    "item": pd.StringDtype(),
    "rating": np.dtype("float32"),
    "timestamp": pd.DatetimeTZDtype("ns", "UTC"),
}


def assert_schema(ds: Dataset) -> None:
    assert dict(ds.interactions.dtypes) == INTERACTION_DTYPES
    assert list(ds.items.columns) == ["item", "title", "genres", "tags", "year"]
    assert ds.items["item"].dtype == pd.StringDtype()
    assert ds.items["title"].dtype == pd.StringDtype()
    assert ds.items["year"].dtype == pd.Int64Dtype()
    for column in ("genres", "tags"):
        assert all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in ds.items[column])
    assert ds.interactions["item"].isin(ds.items["item"]).all()
    assert ds.items["item"].is_unique


# --------------------------------------------------------------------------------------------------
# Bundled ml-latest-small


@pytest.fixture(scope="module")
def small() -> Dataset:
    return load_movielens()


def test_bundled_counts_and_schema(small: Dataset) -> None:
    assert small.name == "ml-latest-small"
    assert len(small.interactions) == 100_836
    assert small.interactions["user"].nunique() == 610
    assert len(small.items) == 9_742
    assert_schema(small)
    assert small.interactions["rating"].between(0.5, 5).all()
    assert small.interactions["timestamp"].min() >= pd.Timestamp("1996-01-01", tz="UTC")


def test_bundled_toy_story(small: Dataset) -> None:
    toy = small.items.set_index("item").loc["1"]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert toy["year"] == 1995
    assert toy["tags"] == ["fun", "pixar"]
    first = small.interactions.iloc[0]
    assert (first["user"], first["item"], first["rating"]) == ("1", "1", 4.0)
    assert first["timestamp"] == pd.Timestamp(964982703, unit="s", tz="UTC")


def test_bundled_tags_and_no_genres(small: Dataset) -> None:
    tags = small.items["tags"]
    assert (tags.str.len() > 0).sum() > 1_000
    assert all(t == sorted(set(t)) and all(x == x.lower().strip() for x in t) for t in tags)
    assert not any("(no genres listed)" in g for g in small.items["genres"])
    assert (small.items["genres"].str.len() == 0).sum() == 34  # movies.csv rows with "(no genres listed)"


def test_bundled_dir_env_then_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_copy = Path(datasets.__file__).resolve().parents[1] / "datasets" / "ml-latest-small"
    monkeypatch.delenv("RECSYS_DATASETS_DIR", raising=False)
    assert bundled_dir() == repo_copy

    (tmp_path / "ml-latest-small").mkdir()
    (tmp_path / "ml-latest-small" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    monkeypatch.setenv("RECSYS_DATASETS_DIR", str(tmp_path))
    assert bundled_dir() == tmp_path / "ml-latest-small"

    monkeypatch.setenv("RECSYS_DATASETS_DIR", str(tmp_path / "nowhere"))
    assert bundled_dir() == repo_copy  # falls back, with a warning


def test_bundled_dir_missing_names_paths_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "__file__", str(tmp_path / "pkg" / "recsys" / "datasets.py"))
    monkeypatch.setenv("RECSYS_DATASETS_DIR", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as err:
        bundled_dir()
    message = str(err.value)
    assert str(tmp_path / "env" / "ml-latest-small") in message
    assert str(tmp_path / "pkg" / "datasets" / "ml-latest-small") in message
    assert "RECSYS_DATASETS_DIR" in message


# --------------------------------------------------------------------------------------------------
# Parsers, on tiny files in the real formats

GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES_100K)


def write_100k(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t1\t5\t881250950\n")
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K)) + "\n")
    toy_flags = _flags("Animation", "Children's", "Comedy")
    rows = [
        f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{toy_flags}",
        f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{_flags('Comedy')}",
        f"302|Misérables, Les \"quoted\" (1995)|01-Jan-1995||http://x|{_flags('Drama', 'Romance')}",
        f"267|unknown||||{_flags('unknown')}",
    ]
    (folder / "u.item").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    return folder


def write_1m(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    movies = (
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "260::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Fantasy|Sci-Fi\n"
        "3::Misérables, Les \"x\" (1995)::Drama\n"
    )
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n")
    return folder


def write_csv_layout(folder: Path, with_tags: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,2.5,1445714835\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        '1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n'
        '3,"American President, The (1995)",Comedy|Drama|Romance\n'
        "7,Untitled Thing,(no genres listed)\n"
    )
    if with_tags:
        (folder / "tags.csv").write_text(
            "userId,movieId,tag,timestamp\n"
            "2,1,Pixar,1445714994\n3,1,pixar ,1445714996\n4,1,fun,1445714997\n"
            '5,3,"politics, sort of",1445715000\n'
        )
    return folder


def test_parse_100k(tmp_path: Path) -> None:
    write_100k(tmp_path / "ml-100k")
    ds = load_movielens("ml-100k", data_home=tmp_path)
    assert ds.name == "ml-100k"
    assert_schema(ds)
    assert ds.interactions["user"].tolist() == ["196", "186", "196"]
    assert ds.interactions["rating"].tolist() == [3.0, 3.0, 5.0]
    assert ds.interactions["timestamp"].iloc[0] == pd.Timestamp(881250949, unit="s", tz="UTC")
    items = ds.items.set_index("item")
    assert items.loc["1", "genres"] == ["Animation", "Children's", "Comedy"]
    assert items.loc["302", "title"] == 'Misérables, Les "quoted" (1995)'
    assert items.loc["302", "year"] == 1995
    assert items.loc["267", "genres"] == []  # the "unknown" flag means no genre
    assert pd.isna(items.loc["267", "year"])
    assert items["tags"].tolist() == [[], [], [], []]


def test_parse_1m(tmp_path: Path) -> None:
    write_1m(tmp_path / "ml-1m")
    ds = load_movielens("ml-1m", data_home=tmp_path)
    assert_schema(ds)
    assert ds.interactions[["user", "item"]].values.tolist() == [["1", "1193"], ["1", "661"], ["2", "1193"]]
    items = ds.items.set_index("item")
    assert items.loc["260", "title"] == "Star Wars: Episode IV - A New Hope (1977)"
    assert items.loc["260", "genres"] == ["Action", "Adventure", "Fantasy", "Sci-Fi"]
    assert items.loc["3", "title"] == 'Misérables, Les "x" (1995)'
    assert items.loc["1193", "year"] == 1975


@pytest.mark.parametrize("name", ["ml-20m", "ml-25m"])
def test_parse_csv_layout(tmp_path: Path, name: str) -> None:
    write_csv_layout(tmp_path / name)
    ds = load_movielens(name, data_home=tmp_path)
    assert_schema(ds)
    assert ds.interactions["rating"].tolist() == [4.0, 4.5, 2.5]
    items = ds.items.set_index("item")
    assert items.loc["3", "title"] == "American President, The (1995)"
    assert items.loc["7", "genres"] == []
    assert pd.isna(items.loc["7", "year"])
    assert items.loc["1", "tags"] == ["fun", "pixar"]
    assert items.loc["3", "tags"] == ["politics, sort of"]
    assert items.loc["7", "tags"] == []


def test_csv_layout_without_tags(tmp_path: Path) -> None:
    ds = read_movielens(write_csv_layout(tmp_path / "x", with_tags=False))
    assert ds.name == "x"
    assert ds.items["tags"].tolist() == [[], [], []]


def test_rated_item_missing_from_items_is_an_error(tmp_path: Path) -> None:
    folder = write_csv_layout(tmp_path / "bad")
    with (folder / "ratings.csv").open("a") as f:
        f.write("9,999,3.0,964982703\n")
    with pytest.raises(DataValidationError, match="999"):
        read_movielens(folder)


def test_wrong_csv_header_is_an_error(tmp_path: Path) -> None:
    folder = write_csv_layout(tmp_path / "bad")
    (folder / "ratings.csv").write_text("user,item,rating,timestamp\n1,1,4.0,964982703\n")
    with pytest.raises(DataValidationError, match="userId"):
        read_movielens(folder)


def test_not_a_movielens_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="u.data"):
        read_movielens(tmp_path)


def test_missing_release_asks_for_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_movielens("ml-1m", data_home=tmp_path)
    with pytest.raises(ValueError, match="ml-25m"):
        load_movielens("ml-7k", data_home=tmp_path)


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_1m(tmp_path / "ml-1m")
    monkeypatch.setenv("RECSYS_DATA_HOME", str(tmp_path))
    assert len(load_movielens("ml-1m").interactions) == 3


# --------------------------------------------------------------------------------------------------
# Downloader, against a local HTTP server


class FileServer:
    """Serves byte strings at paths; counts requests. Modes: "ok", "truncate", "no-length"."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "ok"
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if server.mode != "no-length":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.mode == "truncate" else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


def make_zip(source: Path, top: str, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for file in sorted(source.iterdir()):
            zf.write(file, f"{top}/{file.name}")
        for member, data in (extra or {}).items():
            zf.writestr(zipfile.ZipInfo(member), data)
    return buffer.getvalue()


@pytest.fixture
def archive(tmp_path: Path) -> bytes:
    return make_zip(write_csv_layout(tmp_path / "src" / "ml-test"), "ml-test")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_extracts_and_does_not_download_twice(server: FileServer, archive: bytes, tmp_path: Path) -> None:
    url = server.add("/ml-test.zip", archive)
    cache = tmp_path / "cache"
    folder = fetch_movielens("ml-test", cache, url=url, sha256=sha(archive), size=len(archive))
    assert folder == cache / "ml-test"
    assert sorted(p.name for p in folder.iterdir()) == ["movies.csv", "ratings.csv", "tags.csv"]
    assert [p.name for p in cache.iterdir()] == ["ml-test"]  # no zip, no temp files
    assert len(read_movielens(folder).interactions) == 3

    again = fetch_movielens("ml-test", cache, url=url, sha256=sha(archive), size=len(archive))
    assert again == folder
    assert server.hits["/ml-test.zip"] == 1


def test_fetch_with_progress_bar(server: FileServer, archive: bytes, tmp_path: Path) -> None:
    url = server.add("/ml-test.zip", archive)
    folder = fetch_movielens("ml-test", tmp_path, url=url, sha256=sha(archive), size=len(archive), progress=True)
    assert (folder / "ratings.csv").is_file()


def test_wrong_sha256_leaves_nothing(server: FileServer, archive: bytes, tmp_path: Path) -> None:
    url = server.add("/ml-test.zip", archive)
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as err:
        fetch_movielens("ml-test", cache, url=url, sha256=wrong, size=len(archive))
    message = str(err.value)
    assert url in message and wrong in message and sha(archive) in message
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("mode", ["ok", "no-length"])
def test_wrong_size_leaves_nothing(server: FileServer, archive: bytes, tmp_path: Path, mode: str) -> None:
    server.mode = mode  # with a Content-Length it fails before the body; without, after
    url = server.add("/ml-test.zip", archive)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        fetch_movielens("ml-test", cache, url=url, sha256=sha(archive), size=len(archive) + 7)
    message = str(err.value)
    assert url in message and str(len(archive)) in message and str(len(archive) + 7) in message
    assert list(cache.iterdir()) == []


def test_too_long_download_is_cut_off(server: FileServer, archive: bytes, tmp_path: Path) -> None:
    server.mode = "no-length"
    url = server.add("/ml-test.zip", archive)
    with pytest.raises(DownloadError, match="exceeded the expected size"):
        fetch_movielens("ml-test", tmp_path / "cache", url=url, size=10)
    assert list((tmp_path / "cache").iterdir()) == []


def test_interrupted_download_leaves_nothing(server: FileServer, archive: bytes, tmp_path: Path) -> None:
    server.mode = "truncate"
    url = server.add("/ml-test.zip", archive)
    with pytest.raises(DownloadError, match="ml-test.zip"):
        fetch_movielens("ml-test", tmp_path / "cache", url=url, sha256=sha(archive), size=len(archive))
    assert list((tmp_path / "cache").iterdir()) == []


def test_http_error_and_unreachable(server: FileServer, tmp_path: Path) -> None:
    missing = server.url("/missing.zip")
    with pytest.raises(DownloadError, match="404"):
        fetch_movielens("ml-test", tmp_path, url=missing)
    with pytest.raises(DownloadError, match="127.0.0.1:9"):
        fetch_movielens("ml-test", tmp_path, url="http://127.0.0.1:9/x.zip", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_not_a_zip(server: FileServer, tmp_path: Path) -> None:
    body = b"<html>not a zip</html>"
    url = server.add("/ml-test.zip", body)
    with pytest.raises(DownloadError, match="not a valid zip"):
        fetch_movielens("ml-test", tmp_path, url=url, sha256=sha(body), size=len(body))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("member", ["../evil.txt", "ml-test/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt"])
def test_zip_slip_is_refused(server: FileServer, tmp_path: Path, member: str) -> None:
    body = make_zip(write_csv_layout(tmp_path / "src" / "ml-test"), "ml-test", {member: b"owned"})
    url = server.add("/ml-test.zip", body)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(DownloadError, match="unsafe member"):
        fetch_movielens("ml-test", cache, url=url, sha256=sha(body), size=len(body))
    assert list(cache.iterdir()) == []
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_flat_zip_is_unpacked_into_the_named_folder(server: FileServer, tmp_path: Path) -> None:
    source = write_csv_layout(tmp_path / "src")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for file in source.iterdir():
            zf.write(file, file.name)
    body = buffer.getvalue()
    url = server.add("/flat.zip", body)
    folder = fetch_movielens("flat", tmp_path / "cache", url=url, sha256=sha(body), size=len(body))
    assert sorted(p.name for p in folder.iterdir()) == ["movies.csv", "ratings.csv", "tags.csv"]


def test_load_with_download(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = make_zip(write_csv_layout(tmp_path / "src" / "ml-20m"), "ml-20m")
    url = server.add("/ml-20m.zip", body)
    monkeypatch.setitem(KNOWN_ARCHIVES, "ml-20m", Archive(url, len(body), sha(body)))
    ds = load_movielens("ml-20m", data_home=tmp_path / "cache", download=True)
    assert ds.name == "ml-20m" and len(ds.interactions) == 3
    shutil.rmtree(tmp_path / "src")
    assert len(load_movielens("ml-20m", data_home=tmp_path / "cache").interactions) == 3
    assert server.hits["/ml-20m.zip"] == 1


def test_unknown_checksum_warns(
    server: FileServer, archive: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.add("/ml-test.zip", archive)
    with caplog.at_level("WARNING", logger="recsys"):
        fetch_movielens("ml-test", tmp_path, url=url)
    assert "not checksum-verified" in caplog.text


def test_known_archives_table() -> None:
    assert {"ml-100k", "ml-1m", "ml-20m", "ml-25m"} <= set(KNOWN_ARCHIVES)
    for name, (url, size, digest) in KNOWN_ARCHIVES.items():
        assert url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert size is not None and size > 100_000
        assert digest is not None and len(digest) == 64 and int(digest, 16) >= 0


def test_unknown_name_without_url() -> None:
    with pytest.raises(ValueError, match="ml-100k"):
        fetch_movielens("ml-7k")


# --------------------------------------------------------------------------------------------------
# Synthetic logs


def test_synthetic_is_deterministic() -> None:
    a, b = make_synthetic(seed=3), make_synthetic(seed=3)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    c = make_synthetic(seed=4)
    assert not a.interactions[["user", "item"]].equals(c.interactions[["user", "item"]])


def test_synthetic_shapes_ids_and_schema() -> None:
    ds = make_synthetic(n_users=300, n_items=200, interactions_per_user=15, seed=1)
    assert_schema(ds)
    inter = ds.interactions
    assert inter["user"].nunique() == 300 and len(ds.items) == 200
    assert 0.8 * 300 * 15 < len(inter) < 1.2 * 300 * 15
    assert inter["user"].str.match(r"^u\d{4}$").all() and inter["item"].str.match(r"^i\d{4}$").all()
    assert ds.items["item"].iloc[0] == "i0001" and ds.items["title"].iloc[0] == "Item i0001"
    assert not inter.duplicated(["user", "item"]).any()  # sampled without replacement
    assert set(inter["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ds.items["year"].isna().all() and (ds.items["tags"].str.len() == 0).all()
    assert ds.items["genres"].map(len).eq(1).all()


def test_synthetic_timestamps_increase_per_user_within_window() -> None:
    ds = make_synthetic(n_users=200, seed=2, start="2021-06-01", days=30)
    inter = ds.interactions
    assert inter.groupby("user", sort=False)["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()
    assert inter["timestamp"].min() >= pd.Timestamp("2021-06-01", tz="UTC")
    assert inter["timestamp"].max() < pd.Timestamp("2021-07-01", tz="UTC")


def test_synthetic_planted_clusters_are_recoverable() -> None:
    n_factors = 8
    ds = make_synthetic(n_users=500, n_items=400, n_factors=n_factors, seed=5)
    cluster = ds.items.set_index("item")["genres"].str[0]
    inter = ds.interactions.assign(cluster=ds.interactions["item"].map(cluster).to_numpy())
    share = inter.groupby("user")["cluster"].agg(lambda c: c.value_counts(normalize=True).iloc[0])
    assert share.mean() > 3 / n_factors  # chance would be about 1 / n_factors
    favourite = inter.groupby("user")["cluster"].agg(lambda c: c.value_counts().index[0])
    in_favourite = inter["cluster"].to_numpy() == inter["user"].map(favourite).to_numpy()
    assert inter["rating"][in_favourite].mean() > inter["rating"][~in_favourite].mean() + 0.5


def test_synthetic_popularity_skew() -> None:
    def top_decile_share(skew: float) -> float:
        counts = make_synthetic(n_users=400, n_items=300, popularity_skew=skew, seed=6).interactions["item"]
        counts = counts.value_counts()
        return counts.head(30).sum() / counts.sum()

    assert top_decile_share(2.0) > top_decile_share(0.0) + 0.15


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_items"):
        make_synthetic(n_items=0)


def test_synthetic_is_vectorised() -> None:
    started = time.perf_counter()
    ds = make_synthetic(n_users=20_000, n_items=5_000, interactions_per_user=50)
    assert len(ds.interactions) > 900_000
    assert time.perf_counter() - started < 20
