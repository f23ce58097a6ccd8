"""benchmarks/scale.py runs end to end on a tiny log: both sides in child processes, every phase timed, the
same held-out split scored, the table printed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_benchmark_smoke(tmp_path):
    import scale

    result = scale.run(0.002, 2, 16, seed=0, keep=tmp_path / "log.parquet")
    ours, peer = result["sides"]["recsys"], result["sides"]["implicit"]
    assert result["rows"] > 10_000 and ours["train_interactions"] == peer["train_interactions"]
    assert set(ours["phases"]) >= {"read", "split", "train", "recommend_all", "evaluate"}
    assert ours["phases"]["recommend_all_users_per_s"] > 0 and 0 < ours["peak_rss_gb"] < 8
    assert 0 < ours["ndcg@10"] <= 1 and 0 < peer["ndcg@10"] <= 1
    assert "train time recsys / implicit" in scale.report(result)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--help"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and "--scale" in proc.stdout


def test_ials_export_benchmark_compares_cg_with_the_exact_solve():
    """benchmarks/ials_export.py on a small log: both export solves timed, CG converged within its cap and
    within the tolerance's reach of the exact solve."""
    import ials_export

    from recsys.data import from_arrays
    from recsys.datasets import make_synthetic

    frame = make_synthetic(n_users=300, n_items=200, n_factors=8, interactions_per_user=15, seed=0).interactions
    r = ials_export.compare(from_arrays(frame["user"], frame["item"]))
    assert r["pairs"] > 3000 and r["exact_s"] > 0 and r["cg_s"] > 0
    assert 1 <= r["steps"] < 2 * 128 and r["max_rel"] < 1e-3
