"""benchmarks/sequence.py --smoke: SASRec beside the default set-based model on a leave-last-out split."""
from __future__ import annotations

import json

import numpy as np
import sequence


def test_the_sequence_benchmark_writes_each_logs_ratio_with_its_interval(tmp_path, capsys):
    out = tmp_path / "sequence.json"
    assert sequence.main(["--smoke", "--logs", "planted", "--out", str(out)]) == 0
    row, = json.loads(out.read_text())["logs"]
    assert row["log"] == "planted" and row["test_users"] == 300
    low, high = row["sasrec_vs_set_based_ci"]
    assert low <= row["sasrec_vs_set_based"] <= high
    assert row["sasrec_vs_set_based"] == row["sasrec"]["ndcg@10"] / row["set_based"]["ndcg@10"]
    assert row["sasrec_vs_ials_ci"][0] <= row["sasrec_vs_ials"] <= row["sasrec_vs_ials_ci"][1]
    assert "| planted | 300 | 120 |" in capsys.readouterr().out and out.with_suffix(".md").exists()


def test_generated_logs_plant_an_order_or_shuffle_it():
    planted, unordered = sequence.generated("planted", 50, 40, 10), sequence.generated("unordered", 50, 40, 10)
    assert planted.nnz == unordered.nnz and set(zip(planted.user_index, planted.item_index)) == set(
        zip(unordered.user_index, unordered.item_index)), "the same walks"
    assert not np.array_equal(planted.timestamp, unordered.timestamp), "times shuffled in one"
