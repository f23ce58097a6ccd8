"""Scale benchmark: a generated log shaped like MovieLens-20M, recsys's default model (iALS) beside implicit's
ALS on the same data, split, factors, iterations and threads, in one run.

    .venv/bin/python benchmarks/scale.py                       # 138k users x 27k items x 20M interactions
    .venv/bin/python benchmarks/scale.py --scale 0.1           # a tenth of every dimension's count
    .venv/bin/python benchmarks/scale.py --smoke               # seconds (the test)

The log (recsys.datasets.make_synthetic: power-law popularity, timestamps, ratings) is written once as
Parquet. Each side then runs in a child process of its own, so its peak RSS (VmHWM) is its own:

* recsys: read the Parquet (`read_interactions`), hold out each user's latest 20% (`holdout`), train
  `IALS` at its defaults with `epochs=--iterations` (no early stopping), top-10 for every user streamed in
  batches (`Engine.recommend_batches`), NDCG@10 on the held-out split.
* implicit: the same read and split, `AlternatingLeastSquares(factors=128, iterations=--iterations)` at its
  other defaults, NDCG@10 through the same `recsys.evaluate`.

Prints wall time per phase, peak RSS, interactions per second per epoch, NDCG@10 and the ratios; writes
results/scale.json and .md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns (and slows down) otherwise

HERE = Path(__file__).resolve().parent
ML20M = {"users": 138_493, "items": 26_744, "interactions": 20_000_263}  # MovieLens-20M's counts
EVAL_USERS = 20_000  # held-out users scored for NDCG@10 (a seeded sample, the same on both sides)


def _peak_rss() -> float:
    """This process's peak resident set (VmHWM), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def generate(path: Path, users: int, items: int, interactions: int, seed: int) -> dict:
    from recsys.datasets import make_synthetic

    t0 = time.perf_counter()
    frame = make_synthetic(n_users=users, n_items=items, n_factors=32, interactions_per_user=interactions / users,
                           popularity_skew=0.9, seed=seed).interactions
    frame["timestamp"] = frame["timestamp"].astype("int64") // 10**9
    frame.to_parquet(path, index=False)
    return {"rows": len(frame), "seconds": time.perf_counter() - t0}


def side(name: str, path: Path, factors: int, iterations: int) -> dict:
    """One side of the benchmark, in this (child) process."""
    from recsys.data import holdout, read_interactions
    from recsys.evaluation import evaluate

    phases: dict[str, float] = {}

    def timed(phase: str, fn):
        t0 = time.perf_counter()
        out = fn()
        phases[phase] = round(max(time.perf_counter() - t0, 1e-3), 3)
        return out

    inter = timed("read", lambda: read_interactions(path, user_col="user", item_col="item", weight_col="rating",
                                                    time_col="timestamp"))
    t0 = time.perf_counter()
    train, test = holdout(inter, 0.2, 0)
    phases["split"] = round(time.perf_counter() - t0, 3)
    del inter  # only the two parts from here on
    if name == "recsys":
        from recsys.models import IALS

        model = timed("train", lambda: IALS(factors=factors, epochs=iterations, progress=False).fit(train))
        engine = model.engine_

        def recommend_all() -> int:
            return sum(len(frame) for frame in engine.recommend_batches(10))
        rows = timed("recommend_all", recommend_all)
        phases["recommend_all_users_per_s"] = round(len(engine.users) / phases["recommend_all"])
        del rows
    else:
        from peers import ImplicitALS

        model = timed("train", lambda: ImplicitALS(factors=factors, iterations=iterations).fit(train))
    metrics = timed("evaluate", lambda: evaluate(model, test, 10, max_users=EVAL_USERS, seed=0))
    return {"phases": phases, "ndcg@10": metrics["ndcg@10"], "recall@10": metrics["recall@10"],
            "train_interactions": train.nnz, "pairs_per_s_per_epoch": round(train.nnz * iterations / phases["train"]),
            "peak_rss_gb": round(_peak_rss(), 2), "threads": _threads()}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run(scale: float, iterations: int, factors: int, seed: int, keep: Path | None) -> dict:
    users, items = round(ML20M["users"] * scale), round(ML20M["items"] * scale)
    interactions = round(ML20M["interactions"] * scale)
    with tempfile.TemporaryDirectory(prefix="recsys-scale-") as tmp:
        path = keep or Path(tmp) / "log.parquet"
        if path.exists():  # a log kept from an earlier run (--keep-log): its size from the Parquet footer
            import pyarrow.parquet as pq

            made = {"rows": pq.ParquetFile(path).metadata.num_rows, "seconds": None}
        else:
            made = generate(path, users, items, interactions, seed)
        result = {"scale": scale, "users": users, "items": items, "rows": made["rows"], "iterations": iterations,
                  "factors": factors, "generate_s": made.get("seconds"), "cores": os.cpu_count(), "sides": {}}
        for name in ("recsys", "implicit"):
            t0 = time.perf_counter()
            child = subprocess.run([sys.executable, __file__, "--side", name, "--log", str(path),
                                    "--iterations", str(iterations), "--factors", str(factors)],
                                   capture_output=True, text=True, check=False)
            if child.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{child.stderr[-3000:]}")
            out = json.loads(child.stdout.strip().splitlines()[-1])
            out["wall_s"] = round(time.perf_counter() - t0, 1)
            result["sides"][name] = out
    ours, peer = result["sides"]["recsys"], result["sides"]["implicit"]
    result["train_time_ratio"] = ours["phases"]["train"] / peer["phases"]["train"]
    result["ndcg_ratio"] = ours["ndcg@10"] / peer["ndcg@10"] if peer["ndcg@10"] else None
    result["wall_s"] = sum(s["wall_s"] for s in result["sides"].values()) + (result["generate_s"] or 0)
    return result


def report(r: dict) -> str:
    ours, peer = r["sides"]["recsys"], r["sides"]["implicit"]
    lines = [(f"Scale benchmark: {r['users']:,} users x {r['items']:,} items, {r['rows'] or 0:,} interactions "
             f"(generated, MovieLens-20M's shape x {r['scale']:g}); {r['factors']} factors, {r['iterations']} "
             f"iterations, {r['cores']} cores."), "",
             ("| side | read s | split s | train s | pairs/s per epoch | recommend-all s (users/s) | evaluate s | "
             "NDCG@10 | peak RSS GB | wall s |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in r["sides"].items():
        p = s["phases"]
        rec = f"{p['recommend_all']:.1f} ({p['recommend_all_users_per_s']:,})" if "recommend_all" in p else "n/a"
        lines.append(f"| {name} | {p['read']:.1f} | {p['split']:.1f} | {p['train']:.1f} | "
                     f"{s['pairs_per_s_per_epoch']:,} | {rec} | {p['evaluate']:.1f} | {s['ndcg@10']:.4f} | "
                     f"{s['peak_rss_gb']:.2f} | {s['wall_s']:.0f} |")
    lines += ["", (f"train time recsys / implicit: {r['train_time_ratio']:.2f} (target <= 2); NDCG@10 ratio "
              f"{r['ndcg_ratio']:.3f}; recsys peak RSS {ours['peak_rss_gb']:.2f} GB (target <= 8); whole run "
              f"{r['wall_s'] / 60:.1f} min (target <= 15); implicit peak RSS {peer['peak_rss_gb']:.2f} GB.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of MovieLens-20M's counts (default 1)")
    p.add_argument("--iterations", type=int, default=10, help="ALS sweeps on both sides (default 10)")
    p.add_argument("--factors", type=int, default=128, help="embedding size on both sides (iALS's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="a tiny log, 2 iterations")
    p.add_argument("--keep-log", type=Path, default=None, help="reuse (or write) the generated log here")
    p.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    p.add_argument("--side", choices=["recsys", "implicit"], help=argparse.SUPPRESS)
    p.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:  # a child: one side, its JSON on the last line of stdout
        print(json.dumps(side(args.side, args.log, args.factors, args.iterations)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    scale, iterations = (0.002, 2) if args.smoke else (args.scale, args.iterations)
    result = run(scale, iterations, args.factors, args.seed, args.keep_log)
    text = report(result)
    print(text)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        args.out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
