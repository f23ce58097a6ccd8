"""benchmarks/quality.py runs end to end (a synthetic log, one trial per model; the --suite of logs) and reports
what it measured; the suite's logs have the shapes they claim."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # suite_logs, quality


def test_quality_benchmark_smoke(tmp_path):
    out = tmp_path / "quality.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--smoke", "--models",
                           "mf,ease,popularity,implicit_als,implicit_bpr", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False, env={"OPENBLAS_NUM_THREADS": "1",
                                                                             "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"mf", "ease", "popularity", "implicit_als", "implicit_bpr"}
    assert result["best_ours"] == "mf" and rows["mf"]["kind"] == "ours" and rows["ease"]["kind"] == "peer"
    for r in rows.values():
        assert 0 <= r["ndcg@10"] <= 1 and 0 <= r["recall@10"] <= 1 and r["trials"] == 1
    assert rows["mf"]["ndcg@10"] > rows["popularity"]["ndcg@10"], "a learned model beats popularity here"
    assert "vs implicit_als  NDCG@10 ratio" in proc.stdout
    assert "Target: best ours >= tuned implicit ALS on NDCG@10:" in proc.stdout
    assert out.with_suffix(".md").read_text().startswith("Quality benchmark")


def test_quality_suite_smoke(tmp_path):
    """--suite --smoke: every log (tiny versions), ours vs tuned peers, one table, the verdict, the JSON."""
    out = tmp_path / "quality_suite.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--suite", "--smoke",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=240, check=False,
                          # one torch thread too: on a loaded 2-core machine its spinning threads made this
                          # test 5x slower (117 s against 23 s), the tiny fits being all synchronisation
                          env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    logs = result["logs"]
    assert len(logs) >= 7 and result["smoke"]
    assert {r["key"] for r in logs} >= {"movielens"}
    for r in logs:
        assert 0 <= r["ours"]["ndcg@10"] <= 1 and r["ours"]["model"] in ("ials", "mf", "two_tower"), r
        for peer in ("implicit_als", "ease", "popularity"):
            assert 0 <= r["peers"][peer]["ndcg@10"] <= 1, (r["name"], peer)
        assert r["ratio_als"] is not None and r["ratio_ease"] is not None
        assert f"| {r['name']} |" in proc.stdout
    summary = result["summary"]
    assert summary["compared"] == len(logs) and summary["min_ratio_als"] <= summary["geomean_ratio_als"]
    assert "| ours/ALS | ours/EASE |" in proc.stdout and "geometric mean" in proc.stdout
    verdict = "PASS" if summary["pass"] else "FAIL"
    assert f"Target: ours >= 1.0 x tuned implicit ALS on every log: {verdict}" in proc.stdout
    assert out.with_suffix(".md").read_text().startswith("Quality suite")


@pytest.fixture(scope="module")
def suite_frames():
    import suite_logs

    return {spec: suite_logs.build(spec) for spec in suite_logs.SUITE}


def test_suite_logs_cover_the_shapes(suite_frames):
    """The generated logs (full size, no training) span the weight, timestamp, popularity, history-length and
    catalogue shapes the suite claims."""
    import suite_logs

    assert len(suite_frames) >= 6 and len(set(suite_logs.KEYS)) == len(suite_logs.KEYS)
    assert {s.weights for s in suite_frames} == set(suite_logs.WEIGHT_KINDS)
    assert {s.times for s in suite_frames} == set(suite_logs.TIME_KINDS)
    assert len({s.popularity_skew for s in suite_frames}) >= 4 and len({s.temperature for s in suite_frames}) >= 4
    assert min(s.interactions_per_user for s in suite_frames) <= 10
    assert max(s.interactions_per_user for s in suite_frames) >= 100
    n_items = [frame["item"].nunique() for frame in suite_frames.values()]
    assert min(n_items) <= 1_000 and max(n_items) >= 40_000
    for spec, frame in suite_frames.items():
        pairs = frame[["user", "item"]].drop_duplicates()
        assert 20_000 <= len(pairs) and len(frame) <= 150_000, spec.key
        weight = suite_logs.weight_col(spec)
        assert {"rating", "count"} & set(frame.columns) == ({weight} if weight else set()), spec.key
        assert (len(pairs) < len(frame)) == (spec.weights == "events"), spec.key  # repeated rows
        if spec.times == "none":
            assert "timestamp" not in frame.columns
            continue
        stamps = frame["timestamp"]
        if spec.times == "equal":
            assert stamps.nunique() == 1
        elif spec.times == "day":
            assert (stamps == stamps.dt.floor("D")).all()
            assert frame.duplicated(["user", "timestamp"], keep=False).mean() > 0.2, "users' items tie in time"
        else:
            assert frame.duplicated(["user", "timestamp"], keep=False).mean() < 0.01


def test_suite_declines_ease_up_front():
    """EASE is declined before tuning where it cannot fit, by the library's limit or the machine's memory;
    other peers and small catalogues are not."""
    from types import SimpleNamespace

    import quality

    big, small = SimpleNamespace(n_items=41_632, n_users=12_000), SimpleNamespace(n_items=5_000, n_users=3_000)
    assert "GiB" in quality.dense_refusal("ease", big, available=16 * 2**30)
    assert "available" in quality.dense_refusal("ease", small, available=2**28)
    assert quality.dense_refusal("ease", small, available=16 * 2**30) is None
    assert quality.dense_refusal("implicit_als", big, available=1) is None


def test_make_log_writes_a_log_recsys_reads(tmp_path):
    from recsys.data import read_interactions

    out = tmp_path / "log.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_log.py"), "--users", "50", "--items",
                           "40", "--per-user", "5", "--out", str(out)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    inter = read_interactions(out, user_col="user", item_col="item", weight_col="rating", time_col="timestamp")
    assert inter.n_users == 50 and inter.nnz >= 50 and inter.timestamp is not None
    assert f"{inter.nnz:,} interactions" in proc.stdout
