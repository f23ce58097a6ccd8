"""Tests for recsys.data: reading and validating logs, id maps, duplicates, splits, item metadata."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from recsys.data import (
    IdMap,
    Interactions,
    align_item_metadata,
    detect_delimiter,
    from_arrays,
    leave_last_out,
    random_split,
    read_interactions,
    temporal_split,
    tie_share,
    time_split,
)
from recsys.exceptions import DataValidationError, UnknownIdError

COLS = {"user_col": "userId", "item_col": "movieId", "weight_col": "rating", "time_col": "ts"}


# ----------------------------------------------------------------------------------------- helpers
def raw_log() -> pd.DataFrame:
    """A small log with custom column names, string ids that look numeric, and no duplicates."""
    return pd.DataFrame({
        "userId": ["007", "10", "2", "007", "2", "10"],
        "movieId": ["m2", "m1", "m3", "m1", "m2", "m3"],
        "rating": [4.0, 3.5, 5.0, 1.0, 2.0, 4.5],
        "ts": [1_700_000_005, 1_700_000_001, 1_700_000_002, 1_700_000_003, 1_700_000_004, 1_700_000_000],
        "extra": ["a", "b", "c", "d", "e", "f"],
    })


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def pairs(inter: Interactions) -> set[tuple[str, str]]:
    return set(zip(inter.users.ids[inter.user_index], inter.items.ids[inter.item_index]))


def rows(inter: Interactions) -> list[tuple]:
    """External (user, item, weight, timestamp) rows, order-free comparable."""
    ts = inter.timestamp if inter.timestamp is not None else [None] * inter.nnz
    return sorted(zip(inter.users.ids[inter.user_index], inter.items.ids[inter.item_index],
                      inter.weight.tolist(), list(ts)))


def assert_partition(inter: Interactions, train: Interactions, test: Interactions) -> None:
    """train + test == all rows; no (user, item) pair on both sides; id maps shared."""
    assert train.users is inter.users and test.users is inter.users
    assert train.items is inter.items and test.items is inter.items
    assert train.nnz + test.nnz == inter.nnz
    assert sorted(rows(train) + rows(test)) == rows(inter)
    assert pairs(train) & pairs(test) == set()


def synthetic(n_users: int = 30, n_items: int = 40, per_user: int = 12, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        n = 1 + u % per_user  # 1..per_user interactions
        chosen = rng.choice(n_items, size=n, replace=False)
        users += [f"u{u}"] * n
        items += [f"i{i}" for i in chosen]
        ts += list(rng.integers(0, 1000, size=n))
    return from_arrays(np.array(users), np.array(items), rng.random(len(users)) + 0.5, np.array(ts))


# ------------------------------------------------------------------------------------------ reading
def check_small_log(inter: Interactions) -> None:
    assert list(inter.users.ids) == ["007", "10", "2"]  # sorted as strings; "007" keeps its zeros
    assert list(inter.items.ids) == ["m1", "m2", "m3"]
    assert inter.n_users == 3 and inter.n_items == 3 and inter.nnz == len(inter) == 6
    assert inter.user_index.min() == 0 and inter.user_index.max() == 2
    m = inter.matrix()
    assert m.shape == (3, 3)
    expected = np.array([[1.0, 4.0, 0.0],  # 007: m1=1, m2=4
                         [3.5, 0.0, 4.5],  # 10: m1=3.5, m3=4.5
                         [0.0, 2.0, 5.0]])  # 2: m2=2, m3=5
    np.testing.assert_allclose(m.toarray(), expected)
    np.testing.assert_array_equal(inter.matrix(binary=True).toarray(), (expected > 0).astype(np.float32))
    assert inter.matrix().has_sorted_indices
    assert inter.timestamp.dtype == np.int64
    got = {(u, i): t for u, i, _, t in rows(inter)}
    assert got[("007", "m2")] == 1_700_000_005 and got[("10", "m3")] == 1_700_000_000
    assert inter.n_dropped == 0


def test_read_dataframe_custom_columns() -> None:
    check_small_log(read_interactions(raw_log(), **COLS))


def test_read_csv_keeps_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    raw_log().to_csv(path, index=False)
    assert "007," in path.read_text()
    check_small_log(read_interactions(path, **COLS))
    check_small_log(read_interactions(str(path), **COLS))


def test_read_tsv(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    raw_log().to_csv(path, index=False, sep="\t")
    check_small_log(read_interactions(path, **COLS))


@pytest.mark.parametrize("sep", [";", "|", "\t"])
def test_the_delimiter_is_detected_and_named_when_a_column_is_missing(tmp_path: Path, sep: str) -> None:
    """A ';'-separated export (as spreadsheets in decimal-comma locales write CSV) reads like a comma CSV; when a
    column is missing, the error names the delimiter it read with and how to set it."""
    path = tmp_path / "log.csv"
    frame = raw_log().assign(extra=["a, b", "c", "d; e", "f", "g|h", "i\tj"])
    frame.to_csv(path, index=False, sep=sep)
    assert detect_delimiter(path) == sep
    check_small_log(read_interactions(path, **COLS))
    with pytest.raises(DataValidationError, match=rf"delimiter {re.escape(repr(sep))}, detected; set it with sep="):
        read_interactions(path, user_col="session", item_col="movieId")
    with pytest.raises(DataValidationError, match=r"delimiter ',', given.*Available columns: \['userId"):
        read_interactions(path, user_col="session", item_col="movieId", sep=",")


def test_a_file_without_a_second_column_keeps_the_default_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("item\ni1\ni2\n")
    assert detect_delimiter(path) == "," and detect_delimiter(path, "\t") == "\t"


def test_item_titles_come_from_title_col_or_a_recognised_name_column() -> None:
    log = pd.DataFrame({"user": ["u1", "u2"], "item": ["s1", "s2"]})
    products = pd.DataFrame({"item": ["s1", "s2"], "Name": ["Red shoe", "Hat"], "brand": ["acme", "zeta"]})
    assert read_interactions(log, item_metadata=products).item_titles().tolist() == ["Red shoe", "Hat"]
    assert read_interactions(log, item_metadata=products, title_col="brand").item_titles().tolist() == ["acme", "zeta"]
    assert read_interactions(log, item_metadata=products.drop(columns="Name")).item_titles() is None
    with pytest.raises(DataValidationError, match=r"Title column 'label' \(title_col, CLI --title-col\) not found"):
        read_interactions(log, item_metadata=products, title_col="label")


def test_read_parquet(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    raw_log().to_parquet(path)
    check_small_log(read_interactions(path, **COLS))


def test_numeric_ids_become_strings() -> None:
    frame = pd.DataFrame({"u": [3, 1, 20], "i": [1.0, 2.0, 1.0]})
    inter = read_interactions(frame, user_col="u", item_col="i")
    assert list(inter.users.ids) == ["1", "20", "3"]  # string order
    assert list(inter.items.ids) == ["1", "2"]  # integral floats lose their ".0"
    assert all(isinstance(x, str) for x in inter.users.ids)
    np.testing.assert_array_equal(inter.weight, [1, 1, 1])  # weights default to 1
    assert inter.timestamp is None


def test_to_frame_round_trip() -> None:
    inter = read_interactions(raw_log(), **COLS)
    frame = inter.to_frame()
    assert list(frame.columns) == ["user", "item", "weight", "timestamp"]
    assert str(frame["timestamp"].dt.tz) == "UTC"
    again = read_interactions(frame, weight_col="weight", time_col="timestamp")
    assert again.users == inter.users and again.items == inter.items
    assert rows(again) == rows(inter)
    no_time = from_arrays(np.array(["a", "b"]), np.array(["x", "x"]))
    assert list(no_time.to_frame().columns) == ["user", "item", "weight"]


def test_unknown_file_type_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "log.xlsx"
    bad.write_text("x")
    with pytest.raises(DataValidationError, match=r"unknown file type '\.xlsx'"):
        read_interactions(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_interactions(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------- validation
def test_missing_column_message() -> None:
    with pytest.raises(DataValidationError) as err:
        read_interactions(raw_log(), user_col="user", item_col="movieId")
    msg = str(err.value)
    assert "'user'" in msg and "(user_col)" in msg
    assert "Available columns: ['userId', 'movieId', 'rating', 'ts', 'extra']" in msg
    assert "user_col=<column name>" in msg and "--user-col" in msg


@pytest.mark.parametrize("role,flag", [("item_col", "--item-col"), ("weight_col", "--weight-col"),
                                       ("time_col", "--time-col")])
def test_missing_column_each_role(role: str, flag: str) -> None:
    cols = dict(COLS, **{role: "nope"})
    with pytest.raises(DataValidationError, match=rf"'nope' \({role}\) not found.*{flag}"):
        read_interactions(raw_log(), **cols)


def test_null_user_in_csv_names_column_row_and_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "log.csv", "userId,movieId\n1,a\n2,b\n,c\n4,d\n")
    with pytest.raises(DataValidationError) as err:
        read_interactions(path, user_col="userId", item_col="movieId")
    msg = str(err.value)
    assert "'userId' (user_col)" in msg and "'log.csv'" in msg
    assert "null or empty id" in msg
    assert "at row 2 (line 4 of the file)" in msg
    assert "1 row(s)" in msg and "on_error='drop'" in msg and "--drop-bad-rows" in msg


def test_blank_item_id_in_dataframe_has_no_line_number() -> None:
    frame = pd.DataFrame({"user": ["a", "b"], "item": ["x", "  "]})
    with pytest.raises(DataValidationError) as err:
        read_interactions(frame)
    msg = str(err.value)
    assert "'item' (item_col) in the DataFrame" in msg and "at row 1;" in msg and "line" not in msg


def test_parquet_error_has_no_line_number(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame({"user": ["a", None], "item": ["x", "y"]}).to_parquet(path)
    with pytest.raises(DataValidationError) as err:
        read_interactions(path)
    msg = str(err.value)
    assert "at row 1;" in msg and "line" not in msg


def test_non_numeric_weight_names_value_and_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "log.csv", "u,i,r\na,x,1\nb,y,abc\nc,z,oops\n")
    with pytest.raises(DataValidationError) as err:
        read_interactions(path, user_col="u", item_col="i", weight_col="r")
    msg = str(err.value)
    assert "'r' (weight_col)" in msg and "'abc'" in msg and "at row 1 (line 3 of the file)" in msg
    assert "2 row(s) in all" in msg and "finite numbers" in msg


def test_infinite_weight_rejected() -> None:
    frame = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "w": [1.0, np.inf]})
    with pytest.raises(DataValidationError, match="weight"):
        read_interactions(frame, weight_col="w")


def test_unparsable_timestamp() -> None:
    frame = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "t": ["2024-05-01", "not a date"]})
    with pytest.raises(DataValidationError) as err:
        read_interactions(frame, time_col="t")
    msg = str(err.value)
    assert "'t' (time_col)" in msg and "'not a date'" in msg and "at row 1" in msg and "ISO 8601" in msg


def test_one_bad_timestamp_among_numbers_names_that_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "log.csv", "user,item,t\na,x,100\nb,y,yesterday\nc,z,102\n")
    with pytest.raises(DataValidationError) as err:
        read_interactions(path, time_col="t")
    msg = str(err.value)
    assert "'yesterday' at row 1 (line 3 of the file); 1 row(s) in all" in msg


def test_missing_numeric_timestamp(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "log.csv", "user,item,t\na,x,100\nb,y,\n")
    with pytest.raises(DataValidationError, match=r"'t' \(time_col\).*row 1 \(line 3"):
        read_interactions(path, time_col="t")


def test_empty_logs(tmp_path: Path) -> None:
    header_only = write_csv(tmp_path / "header.csv", "user,item\n")
    with pytest.raises(DataValidationError, match="the log is empty"):
        read_interactions(header_only)
    zero_bytes = write_csv(tmp_path / "zero.csv", "")
    with pytest.raises(DataValidationError, match="empty"):
        read_interactions(zero_bytes)
    with pytest.raises(DataValidationError, match="empty"):
        read_interactions(pd.DataFrame({"user": [], "item": []}))


def test_invalid_parameters() -> None:
    with pytest.raises(DataValidationError, match=r"'duplicates' parameter must be one of .*'sum'.*Got 'mean'"):
        read_interactions(raw_log(), duplicates="mean", **COLS)
    with pytest.raises(DataValidationError, match="'on_error'.*Got 'skip'"):
        read_interactions(raw_log(), on_error="skip", **COLS)


def test_drop_bad_rows_logs_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_csv(tmp_path / "log.csv",
                     "u,i,r,t\n"
                     "a,x,1,100\n"
                     ",y,2,101\n"  # null user
                     "b,,3,102\n"  # null item
                     "c,z,bad,103\n"  # bad weight
                     "d,x,4,yesterday\n"  # bad timestamp
                     "e,y,5,104\n")
    with caplog.at_level(logging.WARNING, logger="recsys"):
        inter = read_interactions(path, user_col="u", item_col="i", weight_col="r", time_col="t",
                                  on_error="drop")
    assert inter.n_dropped == 4
    assert rows(inter) == [("a", "x", 1.0, 100), ("e", "y", 5.0, 104)]
    warnings = [r for r in caplog.records if r.name == "recsys" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Dropped 4 of 6 rows" in warnings[0].getMessage()


def test_drop_everything_is_an_error() -> None:
    frame = pd.DataFrame({"user": [None, ""], "item": ["x", "y"]})
    with pytest.raises(DataValidationError, match="empty after dropping bad rows"):
        read_interactions(frame, on_error="drop")


# ---------------------------------------------------------------------------------------- timestamps
def stamps(values: object, **kwargs: object) -> np.ndarray:
    frame = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "t": values})
    inter = read_interactions(frame, time_col="t", **kwargs)
    assert inter.timestamp.dtype == np.int64
    return np.array([dict(zip(inter.users.ids[inter.user_index], inter.timestamp))[u] for u in "ab"])


def test_timestamp_formats_agree() -> None:
    expected = [1_714_564_800, 1_714_568_400]  # 2024-05-01 12:00 and 13:00 UTC
    np.testing.assert_array_equal(stamps(expected), expected)
    np.testing.assert_array_equal(stamps([float(x) for x in expected]), expected)
    np.testing.assert_array_equal(stamps([str(x) for x in expected]), expected)  # numeric strings
    np.testing.assert_array_equal(stamps(["2024-05-01T12:00:00Z", "2024-05-01T13:00:00Z"]), expected)
    np.testing.assert_array_equal(stamps(["2024-05-01 14:00:00+02:00", "2024-05-01T13:00:00"]), expected)
    naive = pd.to_datetime(["2024-05-01 12:00", "2024-05-01 13:00"])
    np.testing.assert_array_equal(stamps(naive), expected)
    np.testing.assert_array_equal(stamps(naive.tz_localize("UTC").tz_convert("Europe/Paris")), expected)
    np.testing.assert_array_equal(stamps(naive.as_unit("s")), expected)
    np.testing.assert_array_equal(stamps([x * 1000 for x in expected], time_unit="ms"), expected)


def test_iso_timestamps_from_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "log.csv", "user,item,when\na,x,2024-05-01T12:00:00Z\nb,y,1970-01-01\n")
    inter = read_interactions(path, time_col="when")
    assert sorted(inter.timestamp.tolist()) == [0, 1_714_564_800]


# ---------------------------------------------------------------------------------------- duplicates
def dup_log() -> pd.DataFrame:
    return pd.DataFrame({
        "user": ["a", "a", "a", "b", "b", "c"],
        "item": ["x", "x", "x", "y", "y", "z"],
        "w": [1.0, 5.0, 2.0, 3.0, 7.0, 1.0],
        "t": [10, 30, 20, 50, 50, 5],  # a/x: latest is the 5.0 row; b/y: tie at 50, a seeded draw decides
    })


def combined(frame: pd.DataFrame, policy: str, time: bool = True) -> dict[tuple[str, str], tuple]:
    inter = read_interactions(frame, weight_col="w", time_col="t" if time else None, duplicates=policy)
    assert inter.nnz == 3
    return {(u, i): (w, t) for u, i, w, t in rows(inter)}


def test_duplicates_sum_max_last() -> None:
    frame = dup_log()
    assert combined(frame, "sum") == {("a", "x"): (8.0, 30), ("b", "y"): (10.0, 50), ("c", "z"): (1.0, 5)}
    assert combined(frame, "max") == {("a", "x"): (5.0, 30), ("b", "y"): (7.0, 50), ("c", "z"): (1.0, 5)}
    last = combined(frame, "last")
    assert last[("a", "x")] == (5.0, 30) and last[("c", "z")] == (1.0, 5) and last[("b", "y")] in {(3.0, 50), (7.0, 50)}


def test_duplicates_last_breaks_time_ties_by_seeded_draw_not_file_order() -> None:
    frame = pd.DataFrame({"user": ["a"] * 6, "item": ["x"] * 6, "w": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                          "t": [50] * 5 + [10]})
    def winner(f: pd.DataFrame, seed: int) -> float:
        return float(read_interactions(f, weight_col="w", time_col="t", duplicates="last", seed=seed).weight[0])
    winners = {winner(frame, seed) for seed in range(20)}
    assert winners <= {1.0, 2.0, 3.0, 4.0, 5.0} and len(winners) > 2, "any tied row can win, never the older"
    assert winner(frame, 3) == winner(frame, 3), "seeded"


def test_duplicates_last_uses_latest_timestamp_not_file_order() -> None:
    frame = pd.DataFrame({"user": ["a", "a", "a"], "item": ["x", "x", "x"], "w": [9.0, 1.0, 3.0],
                          "t": [300, 100, 200]})
    assert combined(pd.concat([frame, dup_log().iloc[3:]]), "last")[("a", "x")] == (9.0, 300)


def test_duplicates_last_without_timestamps_is_last_row() -> None:
    assert combined(dup_log(), "last", time=False) == {("a", "x"): (2.0, None), ("b", "y"): (7.0, None),
                                                       ("c", "z"): (1.0, None)}


def test_duplicates_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="recsys"):
        read_interactions(dup_log(), weight_col="w")
    assert any("Combined 3 duplicate" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------- id maps
def test_idmap_lookup() -> None:
    ids = IdMap(["a", "b", 3])
    assert len(ids) == 3 and "b" in ids and 3 in ids and "3" in ids and "z" not in ids
    assert ids.index("b") == 1
    np.testing.assert_array_equal(ids.to_index(["b", "a", 3]), [1, 0, 2])
    assert ids.to_index(["b"]).dtype == np.int64
    with pytest.raises(UnknownIdError) as err:
        ids.to_index(["a", "zz"], kind="item")
    assert "'zz'" in str(err.value) and "item" in str(err.value)
    assert isinstance(err.value, KeyError)
    np.testing.assert_array_equal(ids.to_index(["a", "zz", "b"], missing="ignore"), [0, -1, 1])
    np.testing.assert_array_equal(ids.to_index([], missing="ignore"), np.empty(0, np.int64))


def test_idmap_to_ids() -> None:
    ids = IdMap(["a", "b", "c"])
    assert ids.to_ids(np.array([2, -1, 0])).tolist() == ["c", None, "a"]
    assert ids.to_ids(np.array([[1, -1], [-1, 0]])).tolist() == [["b", None], [None, "a"]]
    assert IdMap([]).to_ids(np.array([-1, -1])).tolist() == [None, None]


def test_idmap_json_round_trip_and_equality() -> None:
    ids = IdMap(["007", "b", "10"])
    again = IdMap.from_json(ids.to_json())
    assert again == ids and list(again.ids) == ["007", "b", "10"]
    assert IdMap(["a", "b"]) != IdMap(["b", "a"]) and IdMap(["a"]) != ["a"]


def test_idmap_rejects_duplicates() -> None:
    with pytest.raises(DataValidationError, match="unique"):
        IdMap(["a", "b", "a"])
    with pytest.raises(DataValidationError, match="unique"):
        IdMap([1, "1"])  # the same id once stringified


# -------------------------------------------------------------------------------------------- splits
def test_random_split_fraction_and_min_train() -> None:
    inter = synthetic()
    train, test = random_split(inter, test_fraction=0.25, seed=3)
    assert_partition(inter, train, test)
    n_all = np.bincount(inter.user_index, minlength=inter.n_users)
    n_test = np.bincount(test.user_index, minlength=inter.n_users)
    expected = np.clip(np.minimum(np.round(n_all * 0.25), n_all - 1), 0, None)
    np.testing.assert_array_equal(n_test, expected)
    assert np.all(np.bincount(train.user_index, minlength=inter.n_users) >= 1)  # every user keeps one
    single = np.flatnonzero(n_all == 1)
    assert len(single) and np.all(n_test[single] == 0)


def test_random_split_test_k_and_min_train() -> None:
    inter = synthetic()
    n_all = np.bincount(inter.user_index, minlength=inter.n_users)
    train, test = random_split(inter, test_fraction=None, test_k=2, min_train=3, seed=1)
    assert_partition(inter, train, test)
    n_test = np.bincount(test.user_index, minlength=inter.n_users)
    np.testing.assert_array_equal(n_test, np.clip(np.minimum(2, n_all - 3), 0, None))


def test_random_split_deterministic_per_seed() -> None:
    inter = synthetic()
    a = random_split(inter, 0.3, seed=7)
    b = random_split(inter, 0.3, seed=7)
    c = random_split(inter, 0.3, seed=8)
    assert rows(a[1]) == rows(b[1]) and rows(a[0]) == rows(b[0])
    assert rows(a[1]) != rows(c[1])


def test_temporal_split_holds_out_latest() -> None:
    inter = synthetic()
    for kwargs in ({"test_fraction": 0.3}, {"test_fraction": None, "test_k": 2}):
        train, test = temporal_split(inter, **kwargs)
        assert_partition(inter, train, test)
        assert test.nnz > 0
        for u in range(inter.n_users):
            tr = train.timestamp[train.user_index == u]
            te = test.timestamp[test.user_index == u]
            assert len(tr) >= 1
            if len(te):
                assert tr.max() <= te.min()
    train, test = temporal_split(inter, test_fraction=None, test_k=1)
    n_all = np.bincount(inter.user_index, minlength=inter.n_users)
    np.testing.assert_array_equal(np.bincount(test.user_index, minlength=inter.n_users), (n_all > 1) * 1)


def test_temporal_split_exact_rows() -> None:
    inter = from_arrays(np.array(["a"] * 4 + ["b"] * 2), np.array(["w", "x", "y", "z", "x", "y"]),
                        timestamp=np.array([40, 10, 30, 20, 5, 1]))
    train, test = temporal_split(inter, test_fraction=0.5)
    assert sorted(pairs(test)) == [("a", "w"), ("a", "y"), ("b", "x")]
    assert sorted(pairs(train)) == [("a", "x"), ("a", "z"), ("b", "y")]


def test_leave_last_out_holds_each_users_last_event_for_test_and_the_one_before_for_validation() -> None:
    inter = from_arrays(np.array(["a"] * 4 + ["b"] * 3 + ["c"] * 2), np.array(["w", "x", "y", "z", "x", "y", "z", "w", "x"]),
                        timestamp=np.array([40, 10, 30, 20, 5, 1, 9, 1, 2]))
    train, validation, test = leave_last_out(inter)
    assert sorted(pairs(test)) == [("a", "w"), ("b", "z")]
    assert sorted(pairs(validation)) == [("a", "y"), ("b", "x")]
    assert sorted(pairs(train)) == [("a", "x"), ("a", "z"), ("b", "y"), ("c", "w"), ("c", "x")]  # c: too few
    tied = day_granular()
    splits = [leave_last_out(tied, seed=s) for s in (0, 0, 1)]
    assert pairs(splits[0][2]) == pairs(splits[1][2]) != pairs(splits[2][2]), "ties: a seeded draw"
    _, _, test = splits[0]
    assert abs(test.item_index.mean() - tied.item_index.mean()) < 15, "never by id"
    with pytest.raises(DataValidationError, match="leave_last_out needs timestamps"):
        leave_last_out(from_arrays(np.array(["a"]), np.array(["x"])))


def day_granular(n_users: int = 400, n_items: int = 300, per_user: int = 20, days: int = 2, seed: int = 0
                 ) -> Interactions:
    """Random histories whose timestamps are days: nearly every row ties with others of its user."""
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{u:04d}" for u in range(n_users)], per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    ts = rng.integers(0, days, len(users)) * 86_400
    return from_arrays(users, np.array([f"i{i:04d}" for i in items]), timestamp=ts)


@pytest.mark.parametrize("split", ["per-user fraction", "per-user last k", "global fraction"])
def test_time_ties_are_not_broken_by_id(split: str) -> None:
    """Among rows at the same time, which go to test is a seeded draw: test items are not the largest ids."""
    inter = day_granular()
    train, test = {"per-user fraction": lambda: temporal_split(inter, 0.3),
                   "per-user last k": lambda: temporal_split(inter, None, test_k=5),
                   "global fraction": lambda: time_split(inter, test_fraction=0.3)}[split]()
    assert_partition(inter, train, test)
    # items are drawn uniformly: mean index ~ 149.5 with a standard error of ~1.5-2.5 on either side
    assert abs(test.item_index.mean() - train.item_index.mean()) < 12, split
    assert abs(test.user_index.mean() - train.user_index.mean()) < 12, split
    again = {"per-user fraction": lambda: temporal_split(inter, 0.3, seed=1),
             "per-user last k": lambda: temporal_split(inter, None, test_k=5, seed=1),
             "global fraction": lambda: time_split(inter, test_fraction=0.3, seed=1)}[split]()
    assert pairs(again[1]) != pairs(test), "the seed decides the tie-break"
    if split != "global fraction":  # the latest day still goes to test first
        for u in range(0, inter.n_users, 37):
            assert train.timestamp[train.user_index == u].max() <= test.timestamp[test.user_index == u].min()


def test_time_split_fraction_takes_the_latest() -> None:
    inter = synthetic()
    train, test = time_split(inter, test_fraction=0.25)
    assert_partition(inter, train, test)
    assert test.nnz == round(0.25 * inter.nnz) and train.timestamp.max() <= test.timestamp.min()
    with pytest.raises(DataValidationError, match="exactly one of cutoff.*or test_fraction"):
        time_split(inter)
    with pytest.raises(DataValidationError, match="'test_fraction' parameter must be a float in"):
        time_split(inter, test_fraction=1.0)


def test_tie_share() -> None:
    inter = from_arrays(np.array(["a", "a", "a", "b", "b", "c"]), np.array(["x", "y", "z", "x", "y", "x"]),
                        timestamp=np.array([5, 5, 6, 5, 7, 5]))
    assert tie_share(inter) == pytest.approx(2 / 6)  # a's two rows at 5; b's and c's 5 are other users'
    assert tie_share(day_granular(days=1 + 10**6)) < 0.01
    assert tie_share(from_arrays(np.array(["a"]), np.array(["x"]))) == 0.0


def test_constant_timestamps_make_an_untimed_log(caplog: pytest.LogCaptureFixture) -> None:
    frame = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "y", "x"], "t": ["2024-01-01"] * 3})
    with caplog.at_level(logging.WARNING, logger="recsys"):
        inter = read_interactions(frame, time_col="t")
    assert inter.timestamp is None
    assert any("Every timestamp in the log is the same" in r.getMessage() and "untimed" in r.getMessage()
               for r in caplog.records)
    assert read_interactions(frame.iloc[:1], time_col="t").timestamp is not None, "one row is not a tie"


def test_time_split_global_cut() -> None:
    inter = synthetic()
    train, test = time_split(inter, 500)
    assert_partition(inter, train, test)
    assert np.all(train.timestamp < 500) and np.all(test.timestamp >= 500)
    assert train.nnz and test.nnz
    day = from_arrays(np.array(["a", "a", "b"]), np.array(["x", "y", "x"]),
                      timestamp=np.array([1_714_564_799, 1_714_564_800, 1_714_564_801]))
    for cutoff in ("2024-05-01 12:00", pd.Timestamp("2024-05-01T14:00:00+02:00"),
                   np.int64(1_714_564_800)):
        train, test = time_split(day, cutoff)
        assert sorted(test.timestamp.tolist()) == [1_714_564_800, 1_714_564_801], cutoff
        assert train.timestamp.tolist() == [1_714_564_799]


def test_splits_need_timestamps() -> None:
    inter = from_arrays(np.array(["a", "b"]), np.array(["x", "y"]))
    with pytest.raises(DataValidationError, match="temporal_split needs timestamps.*time_col"):
        temporal_split(inter)
    with pytest.raises(DataValidationError, match="time_split needs timestamps.*time_col"):
        time_split(inter, 0)


@pytest.mark.parametrize("split", [random_split, temporal_split])
def test_split_parameter_errors(split) -> None:
    inter = synthetic(n_users=3)
    for bad in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(DataValidationError, match=r"'test_fraction' parameter must be a float in \(0, 1\)"):
            split(inter, test_fraction=bad)
    with pytest.raises(DataValidationError, match="exactly one of test_fraction.*or test_k"):
        split(inter, test_fraction=0.2, test_k=1)
    with pytest.raises(DataValidationError, match="exactly one of test_fraction.*or test_k"):
        split(inter, test_fraction=None)
    for bad in (0, -1, 1.5):
        with pytest.raises(DataValidationError, match="'test_k' parameter must be an int >= 1"):
            split(inter, test_fraction=None, test_k=bad)


def test_subset_keeps_metadata_and_maps() -> None:
    meta = pd.DataFrame({"item": ["m1", "m2", "m3"], "title": ["One", "Two", "Three"]})
    inter = read_interactions(raw_log(), item_metadata=meta, **COLS)
    train, test = random_split(inter, 0.5)
    assert train.item_metadata is inter.item_metadata and test.item_metadata is inter.item_metadata


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    log=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 8), st.integers(0, 50)), min_size=1, max_size=60),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**16),
    cutoff=st.integers(0, 51),
)
def test_property_splits_partition_without_leakage(log, fraction, seed, cutoff) -> None:
    users = np.array([f"u{u}" for u, _, _ in log])
    items = np.array([f"i{i}" for _, i, _ in log])
    ts = np.array([t for _, _, t in log])
    inter = from_arrays(users, items, timestamp=ts, duplicates="max")
    assert len(pairs(inter)) == inter.nnz  # one row per pair after combining duplicates
    assume(inter.timestamp is not None)  # equal timestamps make an untimed log (tested on its own)
    for train, test in (random_split(inter, fraction, seed=seed), temporal_split(inter, fraction),
                        random_split(inter, None, test_k=1, seed=seed), time_split(inter, cutoff)):
        assert_partition(inter, train, test)
    train, test = temporal_split(inter, fraction)
    for u in np.unique(test.user_index):
        assert train.timestamp[train.user_index == u].max() <= test.timestamp[test.user_index == u].min()


# ------------------------------------------------------------------------------------- item metadata
def test_align_item_metadata() -> None:
    items = IdMap(["1", "2", "3", "4"])
    meta = pd.DataFrame({"item": [3, 1, 2, 99, 1], "title": ["C", "A", "B", "Z", "A-dup"],
                         "year": [2003.0, 2001.0, 2002.0, 2099.0, 1.0]})
    aligned = align_item_metadata(meta, items)
    assert list(aligned["item"]) == ["1", "2", "3", "4"]
    assert list(aligned["title"][:3]) == ["A", "B", "C"]  # first of a duplicated id wins
    assert pd.isna(aligned["title"][3]) and np.isnan(aligned["year"][3])
    assert list(aligned.columns) == ["item", "title", "year"]
    assert align_item_metadata(None, items) is None
    with pytest.raises(DataValidationError, match="'item' column.*'title'"):
        align_item_metadata(pd.DataFrame({"title": ["x"]}), items)


def test_item_metadata_through_reader() -> None:
    meta = pd.DataFrame({"item": ["m3", "m1", "other"], "title": ["Three", "One", "Other"]})
    inter = read_interactions(raw_log(), item_metadata=meta, **COLS)
    titles = inter.item_titles()
    assert titles[0] == "One" and pd.isna(titles[1]) and titles[2] == "Three"
    assert read_interactions(raw_log(), **COLS).item_titles() is None


def test_catalog_metadata_indexes_items_without_interactions() -> None:
    meta = pd.DataFrame({"item": ["m3", "m0", "m1", "zz", None], "title": ["Three", "Zero", "One", "Zed", "?"]})
    inter = read_interactions(raw_log(), item_metadata=meta, catalog="metadata", **COLS)
    assert list(inter.items.ids) == ["m0", "m1", "m2", "m3", "zz"]  # the sorted union; null ids ignored
    assert list(inter.item_metadata["title"][[0, 1, 3, 4]]) == ["Zero", "One", "Three", "Zed"]
    assert pd.isna(inter.item_metadata["title"][2])  # m2: interactions but no metadata row
    default = read_interactions(raw_log(), item_metadata=meta, **COLS)
    assert list(default.items.ids) == ["m1", "m2", "m3"]  # the default is unchanged
    assert pairs(inter) == pairs(default) and rows(inter) == rows(default)
    m = inter.matrix()
    assert m.shape == (3, 5) and m[:, [0, 4]].nnz == 0
    np.testing.assert_array_equal(m[:, [1, 2, 3]].toarray(), default.matrix().toarray())


def test_catalog_metadata_with_numeric_ids_and_no_extra_items() -> None:
    inter = from_arrays(np.array(["a", "b"]), np.array(["2", "10"]), catalog="metadata",
                        item_metadata=pd.DataFrame({"item": [10.0, 2.0, 3.0]}))
    assert list(inter.items.ids) == ["10", "2", "3"]
    assert sorted(zip(inter.users.ids[inter.user_index], inter.items.ids[inter.item_index])) == \
        [("a", "2"), ("b", "10")]
    same = from_arrays(np.array(["a"]), np.array(["x"]), catalog="metadata",
                       item_metadata=pd.DataFrame({"item": ["x"]}))
    assert list(same.items.ids) == ["x"]


def test_catalog_parameter_errors() -> None:
    with pytest.raises(DataValidationError, match="'catalog' parameter must be 'interactions' or 'metadata'"):
        read_interactions(raw_log(), catalog="all", **COLS)
    with pytest.raises(DataValidationError, match="catalog='metadata' needs item_metadata"):
        read_interactions(raw_log(), catalog="metadata", **COLS)
    with pytest.raises(DataValidationError, match="'item' column"):
        from_arrays(np.array(["a"]), np.array(["x"]), catalog="metadata", item_metadata=pd.DataFrame({"t": [1]}))


def test_from_arrays_refuses_missing_ids_and_unknown_policies():
    import pandas as pd

    from recsys.data import from_arrays

    with pytest.raises(DataValidationError, match="id"):
        from_arrays(pd.Series(["u1", None], dtype="string"), np.array(["a", "b"]))
    with pytest.raises(DataValidationError, match="'duplicates' parameter"):
        from_arrays(np.array(["u1"]), np.array(["a"]), duplicates="mean")
