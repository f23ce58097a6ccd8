"""The embedding space made visible: a t-SNE map, norms against popularity, and the dimensionality trade-off.

Computations only (numpy, pandas, scikit-learn); `recsys.plots` draws them.

>>> import numpy as np
>>> coords = tsne_map(np.random.default_rng(0).normal(size=(40, 8)), perplexity=10, seed=0)
>>> coords.shape
(40, 2)
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data import Interactions
from .engine import Engine
from .evaluation import evaluate

log = logging.getLogger("recsys")


def tsne_map(vectors: np.ndarray, *, perplexity: float = 30.0, seed: int = 0, metric: str = "cosine"
             ) -> np.ndarray:
    """2-D coordinates of `vectors` by scikit-learn's t-SNE (PCA start, so a seed gives one map).

    metric 'cosine' places items by direction, as `similar_items` compares them; perplexity is capped below
    the number of points."""
    from sklearn.manifold import TSNE

    vectors = np.asarray(vectors, np.float32)
    perplexity = float(min(perplexity, max(1.0, (len(vectors) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", metric=metric,
                random_state=seed)
    return tsne.fit_transform(vectors).astype(np.float32)


def item_table(engine: Engine, columns: Sequence[str] = ("title", "genres")) -> pd.DataFrame:
    """One row per item: id, the norm of its vector, its training popularity (users) and metadata columns."""
    frame = pd.DataFrame({"item": engine.items.ids, "norm": np.linalg.norm(engine.item_vectors, axis=1),
                          "popularity": engine.catalogue.popularity})
    meta = engine.catalogue.metadata
    for col in columns:
        if meta is not None and col in meta.columns:
            frame[col] = meta[col].to_numpy()
    return frame


def first_genre(genres: Iterable[Any]) -> np.ndarray:
    """The first genre of each item's genre list ('(none)' when empty): a colour per item for a map."""
    out = []
    for g in genres:
        values = list(g) if isinstance(g, (list, tuple, np.ndarray)) else ([] if g is None else [g])
        out.append(str(values[0]) if values else "(none)")
    return np.asarray(out, dtype=object)


def neighbours(engine: Engine, item_ids: Sequence[object], k: int = 5) -> pd.DataFrame:
    """The k most similar items of each of `item_ids`, with titles when the bundle has them."""
    ids, scores = engine.similar_items(list(item_ids), k)
    rows = []
    for query, found, sims in zip(item_ids, ids, scores):
        titles = engine.catalogue.titles(np.asarray([query, *found], dtype=object))
        for rank, (item, sim) in enumerate(zip(found, sims), start=1):
            rows.append({"query": titles[0] if titles is not None else query, "rank": rank, "item": item,
                         "title": titles[rank] if titles is not None else None, "similarity": float(sim)})
    return pd.DataFrame(rows)


def dimensionality_sweep(train: Interactions, test: Interactions, factors: Sequence[int], *, model: str = "ials",
                         k: int = 10, n_queries: int = 200, seed: int = 0, **params: Any) -> pd.DataFrame:
    """One row per embedding size: held-out quality, training time, single-user query latency and the size of
    the bundle on disk (no index), so the trade-off reads across a row.

    params: the model's other parameters (same for every size)."""
    from .models import make_model

    rows = []
    rng = np.random.default_rng(seed)
    for f in factors:
        start = time.perf_counter()
        fitted = make_model(model, factors=int(f), **params).fit(train)
        train_s = time.perf_counter() - start
        metrics = evaluate(fitted, test, k)
        engine = fitted.engine_
        users = rng.choice(engine.user_vectors.shape[0], min(n_queries, engine.user_vectors.shape[0]),
                           replace=False)
        for u in users[:10]:  # warm-up (first calls allocate), then the timed pass
            engine.recommend_indices(np.array([u]), k)
        start = time.perf_counter()
        for u in users:
            engine.recommend_indices(np.array([u]), k)
        query_ms = 1000 * (time.perf_counter() - start) / len(users)
        with tempfile.TemporaryDirectory() as tmp:
            path = fitted.save(Path(tmp) / "bundle")
            size = sum(p.stat().st_size for p in path.iterdir())
        rows.append({"factors": int(f), f"ndcg@{k}": metrics[f"ndcg@{k}"], f"recall@{k}": metrics[f"recall@{k}"],
                     f"coverage@{k}": metrics[f"coverage@{k}"], "train_s": train_s, "query_ms": query_ms,
                     "bundle_mb": size / 2**20})
        log.info("dimensionality sweep: %s", rows[-1])
    return pd.DataFrame(rows)
