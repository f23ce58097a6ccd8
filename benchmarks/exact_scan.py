"""Exact one-query top-k at catalogue scale: float32 scoring against the engine's int8 first pass, one run.

Unit vectors (d dims) scaled by log-normal norms with the spread of the project's MF bundles (σ 0.064) and
of its iALS bundles (σ 0.55), as benchmarks/retrieval.py draws them; random Gaussian queries; one BLAS thread.
Prints ms per query for `recsys.retrieval.exact_topk` (float32) and `recsys.retrieval.Int8Items.topk`, their
ratio, and whether every answer is the same.

    .venv/bin/python benchmarks/exact_scan.py                 # 1M items x 128 dims (about 2 minutes)
    .venv/bin/python benchmarks/exact_scan.py --items 100000 --dim 64
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as served: one BLAS thread per request thread
import numpy as np

from recsys.retrieval import Int8Items, exact_topk

PROFILES = {"MF-like": 0.064, "iALS-like": 0.55}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{args.items:,} items x {args.dim} dims, {args.queries} queries, k={args.k}, median of {args.rounds} "
          "interleaved rounds, ms per query")
    for name, sigma in PROFILES.items():
        vectors = rng.normal(size=(args.items, args.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors *= np.exp(rng.normal(0, sigma, size=(args.items, 1))).astype(np.float32)
        queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
        start = time.perf_counter()
        codes = Int8Items.build(vectors)
        build_s = time.perf_counter() - start
        if codes is None:
            print(f"  {name}: no int8 codes for this catalogue (too small, or recsys._scan not built)")
            continue
        f32, int8 = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            truth = [exact_topk(q[None, :], vectors, args.k)[0] for q in queries]
            f32.append((time.perf_counter() - start) / len(queries) * 1e3)
            start = time.perf_counter()
            found = [codes.topk(q, args.k) for q in queries]
            int8.append((time.perf_counter() - start) / len(queries) * 1e3)
        same = all(f is not None and np.array_equal(f[0], t) for f, t in zip(found, truth))
        a, b = statistics.median(f32), statistics.median(int8)
        print(f"  {name} (σ log norm {sigma}): float32 {a:.3f}, int8 {b:.3f} ({a / b:.2f}x); same answers: {same}; "
              f"codes {codes.nbytes / 2**20:.0f} MiB built in {build_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
