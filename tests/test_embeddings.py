"""recsys.embeddings (t-SNE map, item table, neighbours, dimensionality sweep), the evaluation helpers the
notebooks use, and recsys.plots (each figure drawn and saved)."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from recsys.embeddings import dimensionality_sweep, first_genre, item_table, neighbours, tsne_map
from recsys.evaluation import evaluate, evaluate_by_activity, recommendation_counts
from recsys.models import IALS, Popularity, make_model

matplotlib.use("Agg")


def fast_ials(**kw):
    return IALS(**{"factors": 8, "epochs": 3, "progress": False, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def fitted(synthetic_split):
    train, test = synthetic_split
    return fast_ials().fit(train), train, test


def test_tsne_keeps_clusters_apart():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 16)) + 6, rng.normal(size=(30, 16)) - 6
    coords = tsne_map(np.vstack([a, b]), perplexity=10, metric="euclidean")
    d = np.linalg.norm(coords[:, None] - coords[None], axis=2) + np.eye(60) * 1e9
    nearest = d.argmin(axis=1)
    assert np.mean((nearest < 30) == (np.arange(60) < 30)) > 0.95
    np.testing.assert_array_equal(coords, tsne_map(np.vstack([a, b]), perplexity=10, metric="euclidean"))


def test_item_table_and_neighbours(fitted):
    model, train, _ = fitted
    table = item_table(model.engine_)
    assert len(table) == train.n_items and {"norm", "popularity", "title"} <= set(table.columns)
    np.testing.assert_allclose(table["popularity"], np.bincount(train.item_index, minlength=train.n_items))
    found = neighbours(model.engine_, list(train.items.ids[:2]), k=3)
    assert len(found) == 6 and found["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert found["title"].notna().all()
    assert first_genre([["Drama", "War"], [], None]).tolist() == ["Drama", "(none)", "(none)"]


def test_dimensionality_sweep_reads_across_a_row(synthetic_split):
    train, test = synthetic_split
    table = dimensionality_sweep(train, test, (4, 32), epochs=2, progress=False, device="cpu", n_queries=20)
    assert table["factors"].tolist() == [4, 32]
    assert table["bundle_mb"].iloc[1] > table["bundle_mb"].iloc[0], "more factors, bigger vectors"
    again = evaluate(make_model("ials", factors=32, epochs=2, progress=False, device="cpu").fit(train), test)
    assert table["ndcg@10"].iloc[1] == pytest.approx(again["ndcg@10"]), "each row is that size's held-out score"
    assert table["recall@10"].iloc[1] == pytest.approx(again["recall@10"])


def test_activity_buckets_partition_the_evaluated_users(fitted):
    model, _, test = fitted
    table = evaluate_by_activity(model, test, edges=(1, 10, 15, np.inf))
    assert table["users"].sum() == evaluate(model, test)["users"]
    assert list(table.index)[-1] == "15+"


def test_recommendation_counts_sum_to_users_times_k(fitted):
    model, train, _ = fitted
    counts = recommendation_counts(model, k=5)
    assert counts.sum() == train.n_users * 5 and len(counts) == train.n_items
    pop = recommendation_counts(Popularity().fit(train), k=5)
    assert np.count_nonzero(pop) < np.count_nonzero(counts), "popularity hands out fewer distinct items"


def test_every_plot_draws_and_saves(fitted, tmp_path):
    from recsys import plots

    model, train, test = fitted
    table = {"ials": evaluate(model, test, [5, 10]), "pop": evaluate(Popularity().fit(train), test, [5, 10])}
    import pandas as pd

    figures = {
        "metrics": plots.metrics_at_k(pd.DataFrame(table).T),
        "map": plots.embedding_map(np.random.default_rng(0).normal(size=(train.n_items, 2)),
                                   first_genre(train.item_metadata["genres"]), annotate={0: "first"}),
        "curve": plots.popularity_curve(np.bincount(train.item_index, minlength=train.n_items).astype(float),
                                        {"ials": recommendation_counts(model)}),
        "norms": plots.norm_vs_popularity(item_table(model.engine_)),
        "dims": plots.dimensionality(pd.DataFrame({"factors": [8, 16], "ndcg@10": [0.1, 0.2], "train_s": [1, 2],
                                                   "query_ms": [0.1, 0.2]})),
    }
    assert len(figures["metrics"].axes[0].lines) == 4, "two models x two metrics"
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_the_maps_labels_stay_inside_apart_and_the_legend_outside():
    """Sixteen labels, half of them on points at the right edge (where titles used to pile up and be cut
    off): every label's box is inside the axes, no two overlap, and the legend does not cover the data."""
    from recsys import plots

    rng = np.random.default_rng(0)
    coords = rng.normal(size=(500, 2))
    edge = np.argsort(-coords[:, 0])[:8]  # the eight right-most points
    others = rng.choice(np.setdiff1d(np.arange(500), edge), 8, replace=False)
    annotate = {int(r): f"A long movie title {i}" for i, r in enumerate([*edge, *others])}
    fig = plots.embedding_map(coords, [f"g{i % 5}" for i in range(500)], annotate=annotate)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    frame = ax.get_window_extent(renderer)
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text alone, not its leader line
    assert len(boxes) == 16
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    assert not [(i, j) for i in range(16) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert not ax.get_legend().get_window_extent(renderer).overlaps(frame), "the legend sits beside the map"
