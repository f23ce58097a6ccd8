"""benchmarks/quality.py runs end to end (a synthetic log, one trial per model) and reports what it measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quality_benchmark_smoke(tmp_path):
    out = tmp_path / "quality.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--smoke", "--models",
                           "mf,ease,popularity,implicit_als,implicit_bpr", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False, env={"OPENBLAS_NUM_THREADS": "1",
                                                                             "PATH": "/usr/bin:/bin"})
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
