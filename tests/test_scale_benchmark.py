"""benchmarks/scale.py runs end to end on a tiny log: both sides in child processes, every phase timed, the
same held-out split scored, the table printed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


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
