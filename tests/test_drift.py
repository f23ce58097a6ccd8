"""recsys.drift: what moved between two model versions, checked on planted changes (the changed items top the
report, a rotation of the whole space moves nothing), on retrains with another seed against a later window, and
through `recsys drift` (its exit code is a CI gate)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys.cli import main
from recsys.data import from_arrays
from recsys.drift import drift, rank_biased_overlap
from recsys.engine import Engine
from recsys.exceptions import DataValidationError
from recsys.models import IALS


@pytest.fixture(scope="module")
def base(synthetic):
    return IALS(factors=8, epochs=6, progress=False, device="cpu", seed=0).fit(synthetic)


def _with_vectors(engine: Engine, items: np.ndarray, users: np.ndarray | None = None) -> Engine:
    return Engine(items, engine.user_vectors if users is None else users, engine.users, engine.items, engine.seen,
                  engine.foldin, engine.similarity, engine.catalogue.metadata)


def test_the_same_version_has_not_moved(base):
    report = drift(base.engine_, base.engine_)
    assert report.added == report.removed == [] and report.warnings == []
    assert (report.items["neighbour_overlap"] == 1).all() and report.items["displacement"].max() < 1e-4
    assert report.users["jaccard"] == 1 and report.users["top_item_changed_share"] == 0


def test_planted_changes_top_the_report(base):
    engine = base.engine_
    rng = np.random.default_rng(3)
    vectors = engine.item_vectors.copy()
    swapped = rng.choice(engine.n_items, 6, replace=False)
    vectors[swapped] = vectors[np.roll(swapped, 1)]  # six items take each other's vectors
    rotation = np.linalg.qr(rng.normal(size=(8, 8)))[0].astype(np.float32)
    turned = np.setdiff1d(rng.choice(engine.n_items, 12, replace=False), swapped)[:6]
    vectors[turned] = vectors[turned] @ rotation  # six more rotated on their own
    report = drift(_with_vectors(engine, vectors), engine)
    planted = set(engine.items.ids[np.concatenate([swapped, turned])])
    assert set(report.moved(12)["item"]) == planted
    rest = report.items[~report.items["item"].isin(planted)]
    assert rest["displacement"].max() < report.moved(12)["displacement"].min()


def test_a_rotation_of_the_whole_space_moves_nothing_after_alignment(base):
    """Scores are unchanged when items and users turn together (and when the space is widened with zero
    columns): Procrustes aligns them, so nothing is displaced and every neighbourhood and list is kept."""
    engine = base.engine_
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))[0].astype(np.float32)
    wide = np.zeros((8, 12), np.float32)
    wide[:, :8] = rotation
    turned = _with_vectors(engine, engine.item_vectors @ wide, engine.user_vectors @ wide)
    report = drift(turned, engine)
    assert report.items["displacement"].max() < 1e-3 and report.summary["moved_share"] == 0
    assert report.users["jaccard"] == 1 and report.warnings == []


def test_a_retrain_with_another_seed_moves_less_than_a_later_window(synthetic):
    """Two seeds on the same log drift a little; a model of the log's second half against one of its first half
    drifts more, and its next-window metrics are reported for both versions."""
    frame = pd.DataFrame({"user": synthetic.users.ids[synthetic.user_index],
                          "item": synthetic.items.ids[synthetic.item_index], "time": synthetic.timestamp})
    cut_1, cut_2 = np.quantile(frame["time"], [0.45, 0.9])

    def fit(part: pd.DataFrame, seed: int = 0) -> Engine:
        inter = from_arrays(part["user"].to_numpy(), part["item"].to_numpy())
        return IALS(factors=8, epochs=6, progress=False, device="cpu", seed=seed).fit(inter).engine_

    everything = frame[frame["time"] < cut_2]
    seeds = drift(fit(everything, seed=1), fit(everything, seed=0))
    early, late = frame[frame["time"] < cut_1], frame[(frame["time"] >= cut_1) & (frame["time"] < cut_2)]
    windows = drift(fit(late), fit(early), data=frame[frame["time"] >= cut_2])
    assert seeds.summary["mean_neighbour_overlap"] > windows.summary["mean_neighbour_overlap"] + 0.1, (
        seeds.summary, windows.summary)
    assert seeds.users["jaccard"] > windows.users["jaccard"]
    assert seeds.warnings == [], "a reseed is under the default thresholds"
    assert any("keep fewer than half of their neighbours" in w for w in windows.warnings)
    assert windows.metrics["new"]["users"] == windows.metrics["old"]["users"] > 0
    assert 0 <= windows.metrics["new"]["ndcg@10"] <= 1


def test_rank_biased_overlap():
    assert rank_biased_overlap(list("abc"), list("abc")) == 1
    assert rank_biased_overlap(list("abc"), list("xyz")) == 0
    swapped_top, swapped_tail = rank_biased_overlap(list("bacd"), list("abcd")), rank_biased_overlap(
        list("abdc"), list("abcd"))
    assert 0 < swapped_top < swapped_tail < 1, "a change at the top counts more"


def test_unknown_thresholds_and_bad_k_are_named(base):
    with pytest.raises(DataValidationError, match=r"Unknown drift threshold\(s\) \['moved'\]. Available: "):
        drift(base.engine_, base.engine_, thresholds={"moved": 0.1})
    with pytest.raises(DataValidationError, match=r"The 'k' parameter of drift must be an int >= 1. Got 0."):
        drift(base.engine_, base.engine_, k=0)


def test_the_cli_prints_the_report_and_exits_1_on_a_warning(base, tmp_path, capsys):
    old = base.save(tmp_path / "old")
    engine = base.engine_
    vectors = engine.item_vectors.copy()
    vectors[:40] = vectors[np.random.default_rng(0).permutation(40)]  # 40 of 200 items shuffled
    moved = IALS(factors=8)
    moved._set_state(base.exported_, engine.users, engine.items, engine.seen, engine.catalogue.metadata)
    moved.engine_ = _with_vectors(engine, vectors)
    new = moved.save(tmp_path / "new")
    assert main(["drift", "--bundle", str(new), "--against", str(old)]) == 0, "under the default thresholds"
    out = capsys.readouterr().out
    assert "200 shared, 0 added, 0 removed" in out and "Moved most:" in out
    assert main(["drift", "--bundle", str(new), "--against", str(old), "--json",
                 "--threshold", "moved_share=0.05"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["warnings"] and "moved_share=0.05" in report["warnings"][0]
    assert {m["item"] for m in report["moved"][:10]} <= set(engine.items.ids[:40])
    assert main(["drift", "--bundle", str(new), "--against", str(old), "--threshold", "moved=1"]) == 2
