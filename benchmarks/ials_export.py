"""iALS export solve: CG to a 1e-5 residual from the trained user vectors (the default since 2026-12-03) beside
the exact Cholesky solve it replaced, on logs of several shapes, in one run.

    .venv/bin/python benchmarks/ials_export.py                       # the quality suite's logs + MovieLens
    .venv/bin/python benchmarks/ials_export.py --extra /tmp/ml20m.parquet   # plus a Parquet log (scale.py's)

Per log: `IALS`'s default half-steps (binary confidences, 3 CG steps, its default reg / alpha0 / nu / factors)
for its default epochs, then the user solve given the final items both ways. Prints the seconds of each, the
ratio, the CG steps taken and the largest per-user relative difference |x_cg - x_exact| / |x_exact|.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import scipy.sparse as sp
import suite_logs
import torch

from recsys.data import Interactions, read_interactions
from recsys.foldin import confidence
from recsys.models import IALS
from recsys.models.ials import EXPORT_TOL, solve_rows


class _Steps(logging.Handler):
    """The step counts of solve_rows's 'CG converged after N of at most M steps' messages."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.steps: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("CG converged"):
            self.steps.append(int(record.getMessage().split()[3]))


def compare(inter: Interactions) -> dict:
    defaults = IALS()
    hyper = {"reg": defaults.reg, "reg_exponent": defaults.reg_exponent,
             "unobserved_weight": defaults.unobserved_weight}
    by_user = inter.matrix()
    by_user = sp.csr_matrix((confidence(by_user.data, defaults.confidence, defaults.alpha, defaults.epsilon),
                             by_user.indices, by_user.indptr), shape=by_user.shape)
    by_item = by_user.T.tocsr()
    gen = torch.Generator().manual_seed(0)
    k = defaults.factors
    W = torch.randn((by_user.shape[0], k), generator=gen) * 0.1 / k**0.5
    H = torch.zeros((by_user.shape[1], k))
    for _ in range(defaults.epochs):
        H = solve_rows(W, by_item.indptr, by_item.indices, by_item.data, solver="cg", cg_steps=defaults.cg_steps,
                       current=H, **hyper)
        W = solve_rows(H, by_user.indptr, by_user.indices, by_user.data, solver="cg", cg_steps=defaults.cg_steps,
                       current=W, **hyper)
    t0 = time.perf_counter()
    exact = solve_rows(H, by_user.indptr, by_user.indices, by_user.data, **hyper)
    exact_s = time.perf_counter() - t0
    steps, logger = _Steps(), logging.getLogger("recsys")
    level = logger.level
    logger.addHandler(steps)
    logger.setLevel(logging.DEBUG)  # the message is a debug one; no message: CG ran to its cap
    try:
        t0 = time.perf_counter()
        cg = solve_rows(H, by_user.indptr, by_user.indices, by_user.data, solver="cg", tol=EXPORT_TOL,
                        cg_steps=2 * k, current=W, **hyper)
        cg_s = time.perf_counter() - t0
    finally:
        logger.removeHandler(steps)
        logger.setLevel(level)
    rel = ((cg - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-12))[exact.norm(dim=1) > 0]
    return {"users": by_user.shape[0], "items": by_user.shape[1], "pairs": by_user.nnz, "exact_s": exact_s,
            "cg_s": cg_s, "steps": steps.steps[0] if steps.steps else 2 * k, "max_rel": float(rel.max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--extra", type=Path, action="append", default=[],
                   help="a Parquet log with columns user, item, rating, timestamp (scale.py --keep-log)")
    args = p.parse_args(argv)
    logs = [(spec.key, lambda spec=spec: suite_logs.read(spec)) for spec in suite_logs.SUITE]
    logs.append((suite_logs.MOVIELENS, lambda: suite_logs.read_movielens(False)))
    logs += [(path.name, lambda path=path: read_interactions(path, user_col="user", item_col="item",
                                                             weight_col="rating", time_col="timestamp"))
             for path in args.extra]
    print("| log | users | items | pairs | exact (Cholesky) s | CG to 1e-5 s | exact / CG | CG steps | "
          "max per-user relative difference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, read in logs:
        r = compare(read())
        print(f"| {key} | {r['users']:,} | {r['items']:,} | {r['pairs']:,} | {r['exact_s']:.3f} | {r['cg_s']:.3f} | "
              f"{r['exact_s'] / r['cg_s']:.1f} | {r['steps']} | {r['max_rel']:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
