"""How many k-means cells a query must probe for recall@10, on a model's own trained vectors beside the
retrieval benchmark's generator at the same catalogue size (the check behind the cells caveat in
benchmarks/README.md).

    .venv/bin/python benchmarks/cells_on_trained.py     # about 2 minutes on 2 cores

For each catalogue: a `CellIndex` with sqrt(n) cells; 300 queries (user vectors of the trained model, or the
generator's user-like queries); recall@10 against exact inner-product top-10 as n_probe doubles from 1.
"""
from __future__ import annotations

import numpy as np
from retrieval import PROFILE_LOG, PROFILE_PARAMS, make_centres, make_items, make_queries

from recsys.data import read_interactions
from recsys.datasets import load_movielens, make_synthetic
from recsys.models import make_model
from recsys.retrieval import CellIndex, exact_topk, recall_at_k

K, N_QUERIES = 10, 300


def curve(items: np.ndarray, queries: np.ndarray) -> tuple[int, list[tuple[int, float]]]:
    truth = exact_topk(queries, items, K)
    index = CellIndex("ip").build(items)
    points = []
    for n_probe in (1, 2, 4, 8, 16, 32, 64):
        if n_probe > index.n_cells:
            break
        index.n_probe = n_probe
        points.append((n_probe, recall_at_k(index.search(queries, items, K), truth)))
    return index.n_cells, points


def main() -> int:
    frame = make_synthetic(**PROFILE_LOG, seed=0).interactions
    logs = {"generated (retrieval.py's profile log)": frame, "ml-latest-small": load_movielens().interactions}
    rows = []
    for log_name, frame in logs.items():
        inter = read_interactions(frame, user_col="user", item_col="item", weight_col="rating",
                                  time_col="timestamp")
        for model in ("mf", "ials"):
            fitted = make_model(model, factors=64, progress=False, seed=0, **PROFILE_PARAMS[model]).fit(inter)
            users = np.asarray(fitted.exported_.user_vectors, np.float32)
            queries = users[np.random.default_rng(0).choice(len(users), N_QUERIES, replace=False)]
            items = np.asarray(fitted.exported_.item_vectors, np.float32)
            rows.append((f"{model} trained on {log_name}", len(items), *curve(items, queries)))
    centres = make_centres(64, 1000, 0)
    for sigma in (0.08, 0.5):
        for n in (5_000, 100_000):
            items = make_items(n, centres, sigma, 0, None)
            rows.append((f"generator, sigma {sigma}", n, *curve(items, make_queries(N_QUERIES, centres, 0, 1))))
    print("| vectors | items | cells | recall@10 at n_probe 1, 2, 4, ... | share of cells probed for 0.95 |")
    print("|---|---:|---:|---|---:|")
    for name, n, cells, points in rows:
        need = next((p / cells for p, r in points if r >= 0.95), None)
        print(f"| {name} | {n:,} | {cells} | {', '.join(f'{r:.3f}' for _, r in points)} | "
              f"{'> ' + format(points[-1][0] / cells, '.0%') if need is None else format(need, '.0%')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
