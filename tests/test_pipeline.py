"""The `recsys train` job end to end on the bundled MovieLens data (the issue's acceptance figures)."""
from __future__ import annotations

import pytest

from recsys import artifacts
from recsys.models import MF, load
from recsys.pipeline import train_and_bundle


@pytest.mark.slow
def test_mf_beats_popularity_on_bundled_data(movielens, tmp_path):
    """Quality, not speed (timings live in the README, made by `recsys train`: ~35 s on 2 cores)."""
    report = train_and_bundle(movielens, model="mf", params={"progress": False}, out=tmp_path)
    mf, pop = report.metrics["mf"]["ndcg@10"], report.metrics["popularity"]["ndcg@10"]
    assert mf >= 1.2 * pop, f"MF ndcg@10 {mf:.4f} vs popularity {pop:.4f}"

    model = load(tmp_path)  # through the `current` pointer
    assert isinstance(model, MF)
    assert model.manifest_["metrics"]["ndcg@10"] == pytest.approx(mf)
    assert model.manifest_["evaluation"]["baselines"]["popularity"]["ndcg@10"] == pytest.approx(pop)
    assert artifacts.resolve(tmp_path) == report.bundle.resolve()
    assert model.get_params()["epochs"] == model.manifest_["training"]["epochs_run"], "refit used chosen epochs"
    ids, _ = model.similar_items("2571", k=10)  # The Matrix: neighbours come back with titles
    titles = model.engine_.titles(ids)
    assert all(t is not None for t in titles)


def test_popularity_pipeline_publishes_new_versions(synthetic, tmp_path):
    first = train_and_bundle(synthetic, model="popularity", out=tmp_path).bundle
    second = train_and_bundle(synthetic, model="popularity", out=tmp_path).bundle
    assert first != second and first.exists(), "old versions are kept, never overwritten"
    assert artifacts.resolve(tmp_path) == second.resolve()
    assert set(report_keys(second)) >= {"ndcg@10", "recall@10", "coverage@10"}


def report_keys(bundle):
    return artifacts.verify(bundle)["metrics"].keys()
