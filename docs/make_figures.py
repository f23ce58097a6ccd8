"""Render the README's figures from the same library calls the notebooks make (`make figures`).

Writes docs/images/: tsne_items.png (03_embeddings), metrics_at_k.png (02_evaluation), dimensionality.md and
dimensionality.png (03_embeddings' sweep at full range). Bundled MovieLens data, one temporal holdout, seed 0.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import recsys
from recsys import plots
from recsys.embeddings import dimensionality_sweep, first_genre, item_table, tsne_map
from recsys.evaluation import compare

OUT = Path(__file__).resolve().parent / "images"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--factors", default="16,32,64,128,256,512", help="the dimensionality sweep's sizes")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    data = recsys.load_movielens("ml-latest-small")
    log = recsys.read_interactions(data.interactions, user_col="user", item_col="item", weight_col="rating",
                                   time_col="timestamp", item_metadata=data.items)
    train, test = recsys.temporal_split(log, 0.2)
    common = {"progress": False, "device": "cpu"}
    ials = recsys.IALS(factors=128, epochs=16, **common).fit(train)

    items = item_table(ials.engine_)
    top = items.sort_values("popularity", ascending=False).index[:2000].to_numpy()
    coords = tsne_map(ials.engine_.similarity_vectors[top], perplexity=30, seed=0)
    genres = first_genre(items.loc[top, "genres"])
    labels = {}
    for genre in dict.fromkeys(genres):  # the two most popular movies of each of the first 8 genres seen
        rows = [r for r, g in enumerate(genres) if g == genre][:2]
        labels.update({r: items.loc[top[r], "title"][:26] for r in rows})
        if len(labels) >= 16:
            break
    fig = plots.embedding_map(coords, genres, annotate=labels)
    fig.suptitle("iALS item vectors (128 factors), t-SNE of the 2,000 most popular movies, first genre", fontsize=9)
    fig.savefig(OUT / "tsne_items.png", dpi=130, bbox_inches="tight")

    models = {"iALS": ials, "MF": recsys.MF(factors=128, epochs=16, **common).fit(train),
              "EASE": recsys.EASE().fit(train), "Popularity": recsys.Popularity().fit(train)}
    table = compare(models, test, [1, 5, 10, 20, 50, 100])
    fig = plots.metrics_at_k(table)
    fig.suptitle("Recall@K and NDCG@K, temporal holdout of ml-latest-small", fontsize=9)
    fig.savefig(OUT / "metrics_at_k.png", dpi=130, bbox_inches="tight")

    sweep = dimensionality_sweep(train, test, [int(f) for f in args.factors.split(",")], epochs=16, **common)
    rounded = sweep.round({"ndcg@10": 4, "recall@10": 4, "coverage@10": 3, "train_s": 1, "query_ms": 3,
                           "bundle_mb": 1})
    lines = ["| " + " | ".join(rounded.columns) + " |", "|" + "---|" * len(rounded.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rounded.itertuples(index=False)]
    (OUT / "dimensionality.md").write_text("\n".join(lines) + "\n")
    plots.dimensionality(sweep).savefig(OUT / "dimensionality.png", dpi=130, bbox_inches="tight")
    print((OUT / "dimensionality.md").read_text())


if __name__ == "__main__":
    main()
