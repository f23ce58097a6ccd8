"""The `recsys` command line: every command on a small log, and errors without tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from recsys.cli import main
from recsys.datasets import make_synthetic
from server.state import get_feedback


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory):
    frame = make_synthetic(n_users=120, n_items=80, interactions_per_user=10, seed=3).interactions
    frame = frame.rename(columns={"user": "uid", "item": "iid", "rating": "stars", "timestamp": "when"})
    frame["when"] = frame["when"].astype("int64") // 10**9
    path = tmp_path_factory.mktemp("logs") / "log.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def models(log_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    code = main(["train", "--data", str(log_csv), "--user-col", "uid", "--item-col", "iid", "--time-col", "when",
                 "--weight-col", "stars", "--model", "mf", "--factors", "8", "--epochs", "5", "--quiet",
                 "--out", str(out)])
    assert code == 0
    return out


def test_train_prints_table_and_publishes(models, capsys):
    assert (models / "current").exists()
    assert main(["evaluate", "--bundle", str(models)]) == 0
    out = capsys.readouterr().out
    assert "ndcg@10" in out and "mf" in out and "popularity" in out


def test_evaluate_json_has_metric_keys(models, capsys):
    assert main(["evaluate", "--bundle", str(models), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    from recsys.bundle import verify

    assert metrics == verify(str(models)).metrics and metrics["ndcg@10"] > 0, "the bundle's held-out metrics"


def test_recommend_and_similar(models, log_csv, capsys):
    user = str(pd.read_csv(log_csv, dtype=str)["uid"].iloc[0])
    assert main(["recommend", "--bundle", str(models), "--user", user, "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert f"Top 3 for user {user}" in out and out.count("\n") == 4
    assert main(["similar", "--bundle", str(models), "--item", "i0001", "--k", "4"]) == 0
    assert "Items similar to i0001" in capsys.readouterr().out
    assert main(["recommend", "--bundle", str(models), "--history", "i0001,i0002", "--k", "2"]) == 0
    assert "history of 2 items" in capsys.readouterr().out


def test_recommend_all_writes_every_user(models, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    assert main(["recommend-all", "--bundle", str(models), "--out", str(out), "--k", "5"]) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["user", "item", "rank", "score"]
    manifest = json.loads((models / "current" / "manifest.json").read_text())
    assert frame["user"].nunique() == manifest["n_users"]
    assert (frame.groupby("user")["rank"].max() == 5).all()
    assert (frame.groupby("user")["score"].is_monotonic_decreasing).all()


def test_info_summarises(models, capsys):
    assert main(["info", "--bundle", str(models)]) == 0
    out = capsys.readouterr().out
    assert "checksums OK" in out and "Model:" in out
    assert "Index ip" in out and "recall@10=" in out, "tuning measurements are shown, kept or not"


def _ranked_ids(out: str) -> list[str]:
    """The item ids of `recsys recommend`'s ranked lines ("  1. i0001   0.1234  Title")."""
    return [line.split()[1] for line in out.splitlines() if line[:4].strip().rstrip(".").isdigit()]


def test_unknown_user_gets_the_popular_items_marked_as_fallback(models, capsys):
    """As the service answers an unknown user without feedback (it used to be an error here)."""
    from recsys.engine import load_engine

    assert main(["recommend", "--bundle", str(models), "--user", "nobody", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Top 3 for user nobody (fallback: unknown user") and "most popular items" in out
    popular, _ = load_engine(models)[0].popular_items(3)
    assert _ranked_ids(out) == list(popular)


def test_unknown_item_is_a_clean_error(models, capsys):
    assert main(["similar", "--bundle", str(models), "--item", "nothing"]) == 2
    err = capsys.readouterr().err
    assert "Unknown item 'nothing'" in err and "Traceback" not in err


def test_recommend_offset_exclude_and_history_options(models, log_csv, capsys):
    user = str(pd.read_csv(log_csv, dtype=str)["uid"].iloc[0])
    base = ["recommend", "--bundle", str(models), "--user", user]
    assert main([*base, "--k", "6"]) == 0
    top6 = _ranked_ids(capsys.readouterr().out)
    assert main([*base, "--k", "3", "--offset", "3"]) == 0
    out = capsys.readouterr().out
    assert "after the first 3:" in out and _ranked_ids(out) == top6[3:]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["4.", "5.", "6."], "ranks count the offset"
    assert main([*base, "--k", "4", "--exclude", f"{top6[0]},no-such-item", "--exclude", top6[2]]) == 0
    assert _ranked_ids(capsys.readouterr().out) == [top6[1], *top6[3:6]]
    assert main([*base, "--offset", "-1"]) == 2
    assert "'offset' parameter must be an int >= 0" in capsys.readouterr().err
    assert main(["recommend", "--bundle", str(models), "--history", "i0001", "--feedback-db", "sqlite://"]) == 2
    assert "use it with --user, not --history" in capsys.readouterr().err
    assert main(["recommend", "--bundle", str(models), "--history", "unknown-1,unknown-2", "--k", "2"]) == 0
    assert "history of 2 items (fallback: no item the model knows" in capsys.readouterr().out


def test_null_user_id_names_the_row_without_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\nu1,i1\nu2,i2\n,i3\nu4,i4\n")
    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "train", "--data", str(bad), "--out",
                           str(tmp_path / "m"), "--model", "popularity"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2
    assert "Column 'user'" in proc.stderr and "row 2 (line 4 of the file)" in proc.stderr
    assert "--drop-bad-rows" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists(), "a failed run writes no bundle"


def test_drop_bad_rows_reports_the_count(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\nu1,i1\nu2,i2\n,i3\nu4,i1\nu1,i2\n")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "m"), "--model", "popularity",
                 "--drop-bad-rows"]) == 0
    assert "1 bad rows dropped" in capsys.readouterr().out


def test_missing_column_names_the_flag(log_csv, tmp_path, capsys):
    assert main(["train", "--data", str(log_csv), "--out", str(tmp_path / "m"), "--model", "popularity"]) == 2
    err = capsys.readouterr().err
    assert "Column 'user' (user_col) not found" in err and "--user-col" in err


def test_semicolon_files_train_and_a_missing_items_column_names_the_delimiter(log_csv, tmp_path, capsys):
    """`recsys train` on a ';'-separated log and item file (as European spreadsheets write CSV): detected; an
    item id column that is not there is an error naming the file's delimiter and --sep."""
    import pandas as pd

    log = tmp_path / "log.csv"
    frame = pd.read_csv(log_csv, dtype={"uid": str, "iid": str})
    frame.to_csv(log, index=False, sep=";")
    items = tmp_path / "products.csv"
    pd.DataFrame({"sku": frame["iid"].unique(), "name": "a product; blue"}).to_csv(items, index=False, sep=";")
    common = ["train", "--data", str(log), "--user-col", "uid", "--item-col", "iid", "--model", "popularity",
              "--items", str(items), "--out", str(tmp_path / "m")]
    assert main([*common, "--items-id-col", "sku"]) == 0
    assert main([*common, "--items-id-col", "item_id"]) == 2
    err = capsys.readouterr().err
    assert "Column 'item_id' not found in 'products.csv' (delimiter ';', detected; set it with sep= or --sep)" in err
    assert main([*common, "--items-id-col", "sku", "--sep", ","]) == 2
    assert "delimiter ',', given" in capsys.readouterr().err


def test_recommend_filters_on_item_attributes(models_root, capsys):
    """--filter takes the service's filter expressions; --genre is the same filter on the genres column."""
    assert main(["recommend", "--bundle", str(models_root), "--user", "u0001", "--k", "5", "--json",
                 "--filter", "genres:cluster1,cluster2"]) == 0
    by_filter = json.loads(capsys.readouterr().out)["items"]
    assert main(["recommend", "--bundle", str(models_root), "--user", "u0001", "--k", "5", "--json",
                 "--genre", "cluster1", "--genre", "cluster2"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == by_filter and len(by_filter) == 5
    assert main(["recommend", "--bundle", str(models_root), "--user", "u0001", "--filter", "colour:red"]) == 2
    assert "Unknown item attribute 'colour'" in capsys.readouterr().err


def test_corrupt_bundle_is_refused(models, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(models / "current", copy)
    arrays = copy / "arrays.safetensors"
    data = bytearray(arrays.read_bytes())
    data[-1] ^= 0xFF
    arrays.write_bytes(bytes(data))
    assert main(["recommend", "--bundle", str(copy), "--user", "u0001"]) == 2
    assert "Checksum mismatch for arrays.safetensors" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "tune", "evaluate", "recommend", "similar", "recommend-all", "info", "serve"):
        assert command in out


LOG_COLS = ["--user-col", "uid", "--item-col", "iid", "--time-col", "when"]


def test_tune_writes_params_that_train_uses(log_csv, tmp_path, capsys):
    tuned = tmp_path / "tuned.json"
    assert main(["tune", "--data", str(log_csv), *LOG_COLS, "--model", "ease", "--trials", "3",
                 "--out", str(tuned)]) == 0
    out = capsys.readouterr().out
    assert "ease: best ndcg@10" in out and f"recsys train --model ease --params {tuned}" in out
    result = json.loads(tuned.read_text())
    assert result["best_model"] == "ease" and len(result["results"][0]["trials"]) == 3
    models = tmp_path / "m"
    assert main(["train", "--data", str(log_csv), *LOG_COLS, "--model", "ease", "--params", str(tuned),
                 "--no-index", "--out", str(models)]) == 0
    manifest = json.loads((models / "current" / "manifest.json").read_text())
    assert manifest["model"]["params"]["l2"] == pytest.approx(result["best_params"]["l2"])


def test_train_tune_stores_the_search_in_the_bundle(log_csv, tmp_path, capsys):
    models = tmp_path / "m"
    assert main(["train", "--data", str(log_csv), *LOG_COLS, "--model", "itemknn", "--tune", "--tune-budget", "3",
                 "--no-index", "--out", str(models)]) == 0
    assert "Tuning (ndcg@10 on a validation split" in capsys.readouterr().out
    tuning = json.loads((models / "current" / "manifest.json").read_text())["tuning"]
    assert tuning["model"] == "itemknn" and tuning["searched"] and tuning["n_trials"] >= 1
    assert set(tuning["best_params"]) >= {"neighbours", "shrink"}


@pytest.mark.parametrize("argv, message", [
    (["--factors", "8"], "need a model: add --model"),
    (["--model", "ease", "--params", '{"factors": 3}'], "Model 'ease' has no parameter(s) ['factors']"),
    (["--model", "ease", "--params", "{not json"], "is neither a JSON file nor inline JSON"),
    (["--model", "ease", "--params", "[1, 2]"], "must hold a JSON object"),
])
def test_bad_parameters_are_named(log_csv, tmp_path, capsys, argv, message):
    assert main(["train", "--data", str(log_csv), *LOG_COLS, "--out", str(tmp_path / "m"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_catalog_metadata_indexes_items_without_interactions(log_csv, tmp_path):
    items = pd.DataFrame({"iid": ["brand-new", *pd.read_csv(log_csv, dtype={"iid": str})["iid"].unique()]})
    items["genres"] = "Drama"
    items.to_csv(tmp_path / "items.csv", index=False)
    for catalog, expected in (("interactions", len(items) - 1), ("metadata", len(items))):
        out = tmp_path / catalog
        assert main(["train", "--data", str(log_csv), *LOG_COLS, "--items", str(tmp_path / "items.csv"),
                     "--items-id-col", "iid", "--catalog", catalog, "--model", "popularity", "--out", str(out)]) == 0
        manifest = json.loads((out / "current" / "manifest.json").read_text())
        assert manifest["n_items"] == expected


def test_train_and_evaluate_report_time_ties(log_csv, tmp_path, capsys):
    frame = pd.read_csv(log_csv)
    frame["when"] = frame["when"] // 86_400 * 86_400  # day-granular: most of a user's rows tie
    path = tmp_path / "days.csv"
    frame.to_csv(path, index=False)
    args = ["train", "--data", str(path), "--user-col", "uid", "--item-col", "iid", "--time-col", "when",
            "--model", "popularity", "--quiet", "--out", str(tmp_path / "m")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "each user's latest 20%; " in out and "tie in time, broken by a seeded random draw (seed 0)" in out
    assert main(["evaluate", "--bundle", str(tmp_path / "m")]) == 0
    assert "tied in time, broken by a seeded random draw (seed 0)" in capsys.readouterr().out


def _cli_json(capsys, argv: list[str]) -> dict:
    assert main(["recommend", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_and_server_give_the_same_answers(app, client, synthetic, models_root, capsys):
    """`recsys recommend --json` and GET /v1/users/<id>/recommendations agree for the same user and options:
    a known user (offset, exclusions, genre, include_seen), an unknown user's fallback, and users with
    feedback stored through POST /v1/feedback, which the CLI reads from the same database file."""
    from server_support import AUTH, events

    known, with_feedback = synthetic.users.ids[1], synthetic.users.ids[2]
    genres = synthetic.item_metadata.set_index("item")["genres"]
    cluster = [i for i in synthetic.items.ids if "cluster2" in genres[i]][:6]
    assert client.post("/v1/feedback", json=events(*[("newcomer", i) for i in cluster], (with_feedback, cluster[0])),
                       headers=AUTH).status_code == 201
    db = get_feedback(app).url
    top = client.get(f"/v1/users/{known}/recommendations?k=2").get_json()["items"][0]["id"]
    cases = [  # (user, query string, CLI options)
        (known, "k=5", []),
        (known, "k=3&offset=4", ["--offset", "4"]),
        (known, f"k=4&exclude={top}&exclude=no-such-item&genre=cluster1",
         ["--exclude", f"{top},no-such-item", "--genre", "cluster1"]),
        (known, "k=6&include_seen=true", ["--include-seen"]),
        (known, "k=4&filter=genres:cluster1,cluster2", ["--filter", "genres:cluster1,cluster2"]),
        ("stranger", "k=4&offset=2", ["--offset", "2"]),
        ("stranger", "k=3&genre=cluster0&genre=cluster3", ["--genre", "cluster0", "--genre", "cluster3"]),
        ("newcomer", "k=5&offset=1", ["--offset", "1"]),
        (with_feedback, "k=5", []),
        (with_feedback, "k=5&include_seen=1&exclude=" + cluster[1], ["--include-seen", "--exclude", cluster[1]]),
    ]
    fallbacks = []
    for user, query, options in cases:
        k = query.split("&")[0].removeprefix("k=")
        served = client.get(f"/v1/users/{user}/recommendations?{query}").get_json()
        printed = _cli_json(capsys, ["--bundle", str(models_root), "--user", user, "--k", k, *options,
                                     "--feedback-db", db])
        assert [i["id"] for i in printed["items"]] == [i["id"] for i in served["items"]], (user, query)
        assert [i["title"] for i in printed["items"]] == [i["title"] for i in served["items"]]
        assert [i["score"] for i in printed["items"]] == pytest.approx([i["score"] for i in served["items"]],
                                                                       rel=1e-6, abs=1e-6)
        assert len(served["items"]) == int(k), (user, query)
        assert {key: printed[key] for key in ("user", "fallback", "model_version")} == \
            {key: served[key] for key in ("user", "fallback", "model_version")}
        fallbacks.append(served["fallback"])
    assert fallbacks == [False] * 5 + [True, True] + [False] * 3
    without = _cli_json(capsys, ["--bundle", str(models_root), "--user", "newcomer"])
    assert without["fallback"] is True, "without --feedback-db the CLI sees no stored events"


def test_recommend_all_streams_batches_into_one_file(models, tmp_path):
    """Small batches (streamed through one ParquetWriter) give the same file as one batch; no temporary
    file is left behind."""
    whole, batched = tmp_path / "whole.parquet", tmp_path / "batched.parquet"
    assert main(["recommend-all", "--bundle", str(models), "--out", str(whole), "--k", "4", "--quiet"]) == 0
    assert main(["recommend-all", "--bundle", str(models), "--out", str(batched), "--k", "4", "--quiet",
                 "--batch-users", "7"]) == 0
    import pyarrow.parquet as pq

    assert pq.ParquetFile(batched).metadata.num_row_groups > 1  # written batch by batch
    pd.testing.assert_frame_equal(pd.read_parquet(whole), pd.read_parquet(batched))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batched.parquet", "whole.parquet"]


def test_train_shows_each_phase_with_its_time(tmp_path, capsys):
    data = tmp_path / "log.csv"
    data.write_text("user,item\n" + "\n".join(f"u{u},i{(u + j) % 30}" for u in range(40) for j in range(6)) + "\n")
    assert main(["train", "--data", str(data), "--model", "popularity", "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    for name in ("reading", "splitting", "fitting on the training split", "evaluating", "building the retrieval index",
                 "writing the bundle"):
        assert f"{name}" in err and err.count(name) >= 2, name  # started, then done in N s
    assert "done in" in err
    assert main(["train", "--data", str(data), "--model", "popularity", "--out", str(tmp_path / "m"),
                 "--quiet"]) == 0
    assert "reading" not in capsys.readouterr().err  # --quiet: no phases
