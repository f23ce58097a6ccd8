"""Quality benchmark: recsys's models beside tuned peers on one split of the bundled data, in one run.

Protocol (the same for every model, ours and peers):
  * ml-latest-small; each user's latest 20% of interactions is the test split (per-user temporal 80/20);
  * every model is tuned by recsys.tune (Optuna TPE, the same time budget per model) on a validation split
    carved the same way from the training part; when the best value of a numeric parameter lies on the edge of
    its range, the range is widened and the search runs again (--widen rounds), so no peer is judged on a grid
    that was too narrow;
  * the best parameters are refitted on the whole training part (epochs as early stopping chose them) and
    evaluated on the test split by recsys.evaluate: full ranking over the catalogue, the user's training items
    excluded, Recall@10 = hits / min(10, |test|), binary NDCG@10.
Peers: implicit's ALS and BPR (benchmarks/peers.py wraps them in recsys's contract), EASE, item-KNN and
Popularity. "Ours" are the embedding models (iALS, MF, two-tower); the best of them is picked on validation,
not on test, and its ratio to each peer is printed.

    .venv/bin/python benchmarks/quality.py                     # the README run (~25 min on 2 cores)
    .venv/bin/python benchmarks/quality.py --budget 30 --models ials,implicit_als,ease
    .venv/bin/python benchmarks/quality.py --smoke             # a synthetic log, one trial each (the test)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import peers  # noqa: F401 - registers implicit_als / implicit_bpr

from recsys.data import Interactions, read_interactions, temporal_split
from recsys.datasets import load_movielens, make_synthetic
from recsys.evaluate import evaluate
from recsys.models import MODEL_REGISTRY
from recsys.pipeline import make_model, model_params
from recsys.tune import EMBEDDING_MODELS, SEARCH_SPACES, TuneResult, tune, widen

log = logging.getLogger("benchmarks.quality")
PEERS = ("implicit_als", "implicit_bpr", "ease", "itemknn", "popularity")
DEFAULT_MODELS = (*EMBEDDING_MODELS, *PEERS)


def load(smoke: bool) -> Interactions:
    ds = make_synthetic(n_users=300, n_items=200, n_factors=4, interactions_per_user=15, seed=7) if smoke \
        else load_movielens("ml-latest-small")
    return read_interactions(ds.interactions, user_col="user", item_col="item", weight_col="rating",
                             time_col="timestamp", item_metadata=ds.items)


def tune_widening(train: Interactions, name: str, budget: float, n_trials: int | None, rounds: int,
                  fixed: dict, seed: int) -> tuple[TuneResult, int, dict]:
    """Tune; while the best sits on a range edge, widen that range and tune again (up to `rounds` times)."""
    space = SEARCH_SPACES[name]
    best = tune(train, name, budget=budget, n_trials=n_trials, fixed=fixed, space=space, seed=seed)
    widened = 0
    while best.edges and widened < rounds:
        space = widen(space, best.edges)
        widened += 1
        log.info("%s: best on an edge %s, widened to %s", name, best.edges, {k: str(space[k]) for k in best.edges})
        again = tune(train, name, budget=budget, n_trials=n_trials, fixed=fixed, space=space, seed=seed + widened)
        best = again if again.best_value > best.best_value else best
    return best, widened, {k: str(v) for k, v in space.items()}


def run(models: list[str], budget: float, n_trials: int | None, rounds: int, smoke: bool, seed: int) -> dict:
    inter = load(smoke)
    train, test = temporal_split(inter, 0.2)
    rows = []
    for name in models:
        fixed = model_params(name, seed=seed, progress=False, device="auto")
        t0 = time.perf_counter()
        result, widened, space = tune_widening(train, name, budget, n_trials, rounds, fixed, seed)
        tune_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = make_model(name, **result.best_params).fit(train)
        fit_s = time.perf_counter() - t0
        metrics = evaluate(model, test, 10)
        rows.append({"model": name, "kind": "ours" if name in EMBEDDING_MODELS else "peer",
                     "val_ndcg@10": result.best_value, "ndcg@10": metrics["ndcg@10"],
                     "recall@10": metrics["recall@10"], "fit_s": fit_s, "tune_s": tune_s,
                     "trials": result.n_trials, "widened": widened, "edges_left": result.edges,
                     "params": result.best_params, "space": space})
        log.info("%s: test ndcg@10 %.4f (validation %.4f), fit %.1f s", name, metrics["ndcg@10"],
                 result.best_value, fit_s)
    ours = [r for r in rows if r["kind"] == "ours"]
    best = max(ours, key=lambda r: r["val_ndcg@10"]) if ours else None
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "smoke": smoke,
            "data": {"interactions": inter.nnz, "users": inter.n_users, "items": inter.n_items,
                     "train": train.nnz, "test": test.nnz},
            "budget_s_per_model": budget, "trials_per_model": n_trials, "widen_rounds": rounds,
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "best_ours": best["model"] if best else None, "rows": rows}


def report(result: dict) -> str:
    lines = [(f"Quality benchmark ({result['date']}): per-user temporal 80/20 of "
             f"{result['data']['interactions']:,} interactions, {result['data']['users']:,} users x "
             f"{result['data']['items']:,} items; each model tuned {result['budget_s_per_model']:.0f} s "
             f"(+ up to {result['widen_rounds']} widening rounds) on a validation split of the training part."),
             "",
             ("| model | kind | validation NDCG@10 | test NDCG@10 | test Recall@10 | final fit (s) | tuning (s) | "
             "trials | best parameters |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: -r["ndcg@10"]):
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items()
                           if k not in ("progress", "device", "seed"))
        edge = f" (still on an edge: {r['edges_left']})" if r["edges_left"] else ""
        lines.append(f"| {r['model']} | {r['kind']} | {r['val_ndcg@10']:.4f} | {r['ndcg@10']:.4f} | "
                     f"{r['recall@10']:.4f} | {r['fit_s']:.1f} | {r['tune_s']:.0f} | {r['trials']} | "
                     f"{params}{edge} |")
    best = next((r for r in result["rows"] if r["model"] == result["best_ours"]), None)
    if best:
        lines += ["", (f"Our best embedding model (picked on validation): {best['model']}, test NDCG@10 "
                      f"{best['ndcg@10']:.4f}")]
        for r in result["rows"]:
            if r["kind"] == "peer":
                ratio = best["ndcg@10"] / r["ndcg@10"] if r["ndcg@10"] else float("inf")
                lines.append(f"  vs {r['model']:<13} NDCG@10 ratio {ratio:.3f}  "
                             f"(fit {best['fit_s']:.1f} s vs {r['fit_s']:.1f} s)")
        als = next((r for r in result["rows"] if r["model"] == "implicit_als"), None)
        if als:
            verdict = "PASS" if best["ndcg@10"] >= als["ndcg@10"] else "FAIL"
            lines.append(f"Target: best ours >= tuned implicit ALS on NDCG@10: {verdict}")
    return "\n".join(lines)


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    p.add_argument("--budget", type=float, default=150.0, help="tuning seconds per model and round")
    p.add_argument("--trials", type=int, default=None, help="stop each search after this many trials")
    p.add_argument("--widen", type=int, default=1, help="widening rounds when a best value is on an edge")
    p.add_argument("--smoke", action="store_true", help="synthetic log, one trial per model (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "quality.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODEL_REGISTRY or m not in SEARCH_SPACES]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {sorted(set(MODEL_REGISTRY) & set(SEARCH_SPACES))}")
    trials = 1 if args.smoke and args.trials is None else args.trials
    result = run(models, args.budget, trials, 0 if args.smoke else args.widen, args.smoke, args.seed)
    text = report(result)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
