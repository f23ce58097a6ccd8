"""One-query scoring kernels on a trained bundle's own vectors, side by side in one process.

What a computed recommendation spends in the engine: one user's scores against every item, then top-k. This
times, interleaved round by round (the machine's speed moves within minutes):
  * the product as `item_vectors @ q` (BLAS's row kernel, the engine's kernel before 2026-12-04) and as
    `q @ item_columns` (a (d, n) copy: the column kernel the engine uses now);
  * one shared product for b concurrent queries (`Q @ item_columns`), per query: what micro-batching the
    requests inside a worker would buy;
  * top-k of one row: the engine's path for one row (`recsys.engine.topk`) and a plain argpartition +
    stable sort of the survivors, and the batched paths it replaced on one row;
  * the fold-in's ridge solve (a d x d system from 50 of the bundle's items plus its Gramian): LU
    (`np.linalg.solve`, before 2026-12-04) and Cholesky (`recsys.foldin.solve_spd`);
  * one query's whole exact top-k, 165 seen items excluded: float32 (column product, then the engine's top-k)
    against the int8 first pass (`recsys.retrieval.Int8Items.topk`, the engine's path since 2026-12-04), on
    the bundle's items and on its first n items for each n of --sizes (where recsys.retrieval.int8's MIN_CELLS
    switch from float32 to int8 comes from); where the bundle has mostly-zero columns (a blend's EASE block),
    also the int8 pass with every column as codes (the engine's path before 2026-12-08).
Each call is preceded by --filler-us of pure-Python work, so the item matrix is as cold as between two
requests rather than hot from the previous call.

    .venv/bin/recsys train --out models --quiet && .venv/bin/python benchmarks/scoring.py --bundle models
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as served: one BLAS thread per request thread
import numpy as np

from recsys.engine import load_engine
from recsys.foldin import solve_spd
from recsys.retrieval import Int8Items, topk
from recsys.retrieval.topk import topk_by_partition, topk_by_threshold


def busy(us: float) -> None:
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def partition_row(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    cols = np.flatnonzero(row >= np.partition(row, len(row) - k)[len(row) - k])
    order = np.argsort(-row[cols], kind="stable")[:k]
    return cols[order], row[cols][order]


def exact_float32(q: np.ndarray, columns: np.ndarray, seen: np.ndarray, k: int):
    scores = (q @ columns)[None, :]
    scores[0, seen] = -np.inf
    return topk(scores, k)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle directory or a models root")
    p.add_argument("--calls", type=int, default=300, help="timed calls per kernel per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--filler-us", type=float, default=400.0)
    p.add_argument("--sizes", type=int, nargs="*", default=[250, 500, 1000, 2000, 4000],
                   help="also time the whole one-query top-k on the bundle's first n items")
    args = p.parse_args(argv)

    from recsys.bundle import resolve
    engine, _ = load_engine(resolve(str(args.bundle)))
    items, users, columns = engine.item_vectors, engine.user_vectors, engine.retriever.item_columns
    rng = np.random.default_rng(0)
    queries = users[rng.choice(len(users), min(len(users), 1024), replace=False)]
    queries = np.resize(queries, (max(len(queries), 64), queries.shape[1]))  # (a small bundle: users repeat)
    rows = np.stack([q @ columns for q in queries[:64]])
    rows[:, rng.choice(items.shape[0], min(165, items.shape[0] // 4), replace=False)] = -np.inf  # seen items
    hist = items[rng.choice(items.shape[0], min(50, items.shape[0]), replace=False)]
    system = hist.T @ hist + 0.1 * (items.T @ items) + 0.01 * np.eye(items.shape[1], dtype=np.float32)
    rhs = hist.sum(axis=0)

    kernels: dict[str, tuple[object, int]] = {
        "product: item_vectors @ q (row kernel)": (lambda i: items @ queries[i % len(queries)], 1),
        "product: q @ item_columns (column kernel)": (lambda i: queries[i % len(queries)] @ columns, 1),
    }
    for b in (2, 4, 8, 16):
        kernels[f"product: {b} queries in one GEMM, per query"] = (
            lambda i, b=b: queries[(i * b) % (len(queries) - b):(i * b) % (len(queries) - b) + b] @ columns, b)
    kernels.update({
        "top-k of one row: engine (grouped maxima)": (lambda i: topk(rows[i % 64][None, :], args.k), 1),
        "top-k of one row: argpartition + sort": (lambda i: partition_row(rows[i % 64], args.k), 1),
        "top-k of one row: batched threshold path": (lambda i: topk_by_threshold(rows[i % 64][None, :], args.k), 1),
        "top-k of one row: batched partition path": (lambda i: topk_by_partition(rows[i % 64][None, :], args.k), 1),
        "fold-in solve: np.linalg.solve (LU)": (lambda i: np.linalg.solve(system, rhs), 1),
        "fold-in solve: solve_spd (Cholesky, float64)": (lambda i: solve_spd(system, rhs), 1),
    })
    n_items = items.shape[0]
    for n in sorted({*(n for n in args.sizes if n < n_items), n_items}):
        sub = np.ascontiguousarray(items[:n])
        sub_columns, codes = np.ascontiguousarray(sub.T), Int8Items(sub)
        seen = [np.sort(rng.choice(n, min(165, n // 4), replace=False)) for _ in range(64)]
        kernels[f"top-k, {n} items: float32 (column product + top-k)"] = (
            lambda i, c=sub_columns, seen=seen: exact_float32(queries[i % len(queries)], c, seen[i % 64], args.k), 1)
        kernels[f"top-k, {n} items: int8 first pass (Int8Items)"] = (
            lambda i, c=codes, seen=seen: c.topk(queries[i % len(queries)], args.k, seen[i % 64]), 1)
        if codes.sparse is not None:  # a blend's mostly-zero columns: against every column as codes
            whole = Int8Items(sub, sparse=False)
            kernels[f"top-k, {n} items: int8, every column as codes"] = (
                lambda i, c=whole, seen=seen: c.topk(queries[i % len(queries)], args.k, seen[i % 64]), 1)
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(args.rounds):
        for name, (fn, per) in kernels.items():
            total = 0.0
            for i in range(args.calls):
                busy(args.filler_us)
                start = time.perf_counter()
                fn(i)
                total += time.perf_counter() - start
            times[name].append(total / args.calls / per * 1e3)
    print(f"bundle {engine.n_items:,} items x {items.shape[1]} dims; {args.rounds} rounds of {args.calls} calls, "
          f"{args.filler_us:g} us of Python before each; ms per query, median [min-max] of rounds")
    base = {"product": statistics.median(times["product: item_vectors @ q (row kernel)"]),
            "top-k of one row": statistics.median(times["top-k of one row: batched threshold path"]),
            "fold-in solve": statistics.median(times["fold-in solve: np.linalg.solve (LU)"])}
    for name, ts in times.items():
        group = name.split(":")[0]
        if group.startswith("top-k, "):  # each catalogue size against its own float32 row
            base[group] = statistics.median(times[f"{group}: float32 (column product + top-k)"])
        ref = base[group]
        med = statistics.median(ts)
        print(f"  {name:48s} {med:7.3f} [{min(ts):.3f}-{max(ts):.3f}]  {ref / med:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
