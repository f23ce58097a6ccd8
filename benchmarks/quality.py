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

--suite is the robustness suite: the default `recsys train --tune` path ("ours": model auto, the library's
default budget) beside tuned implicit ALS, tuned EASE and Popularity on seven generated logs of different
shapes plus the bundled data (benchmarks/suite_logs.py), each log on its own holdout split, all in one run:

    .venv/bin/python benchmarks/quality.py --suite                       # every log (hours: see the README)
    .venv/bin/python benchmarks/quality.py --suite --budget 60 --logs steep-short,movielens
    .venv/bin/python benchmarks/quality.py --suite --smoke               # tiny logs, a 2 s budget (the test)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import peers  # noqa: F401 - registers implicit_als / implicit_bpr
import suite_logs

from recsys.data import Interactions, holdout, read_interactions, temporal_split
from recsys.datasets import load_movielens, make_synthetic
from recsys.evaluation import evaluate
from recsys.exceptions import RecsysError
from recsys.models import MODEL_NAMES, MODEL_REGISTRY, make_model, model_params
from recsys.pipeline import train_and_bundle
from recsys.tuning import EMBEDDING_MODELS, SEARCH_SPACES, TuneResult, default_budget, tune

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
    """recsys.tune with its range widening: `budget` seconds per round, `rounds` widening rounds."""
    best = tune(train, name, budget=budget * (rounds + 1), n_trials=n_trials, fixed=fixed, seed=seed,
                widen_rounds=rounds)
    space = {**{k: str(v) for k, v in SEARCH_SPACES[name].items()}, **best.widened}
    return best, len(best.widened), space


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


# ------------------------------------------------------------------------------------------------ --suite
SUITE_PEERS = ("implicit_als", "ease")
SMOKE_BUDGET = 2.0  # seconds; every tune still runs one trial per model
WEIGHT_WORDS = {"binary": "binary", "rating": "rating", "count": "count column", "events": "count (repeated rows)"}
TIME_WORDS = {"seconds": "seconds", "none": "none", "day": "day (ties)", "equal": "all equal"}


def suite_log(key: str, smoke: bool) -> tuple[str, Interactions, str, str]:
    """(name, interactions, weights, timestamps) of one suite log; timestamps says how recsys read them."""
    if key == suite_logs.MOVIELENS:
        return "MovieLens ml-latest-small", suite_logs.read_movielens(smoke), "rating", "seconds"
    spec = next(s for s in suite_logs.SUITE if s.key == key)
    inter = suite_logs.read(spec.smoke() if smoke else spec)
    times = TIME_WORDS[spec.times]
    if spec.times != "none" and inter.timestamp is None:
        times += " (read as untimed)"
    return spec.name, inter, WEIGHT_WORDS[spec.weights], times


def dense_refusal(name: str, train: Interactions, available: int | None = None) -> str | None:
    """Why the benchmark does not fit `name` on `train`, or None. EASE holds n_items x n_items float32 matrices
    (three at its peak) and a dense users x items history (`recsys.models.baselines.dense_bytes`): past the
    library's own limit, or past 80% of the machine's available memory, the row is declined up front, before
    any data is split or searched."""
    if name != "ease":
        return None
    from recsys.models import baselines

    need = baselines.dense_bytes(train.n_users, train.n_items)
    if need > baselines.MAX_DENSE_BYTES:
        return (f"{train.n_items:,} items and {train.n_users:,} users need about {need / 2**30:.1f} GiB, over "
                f"EASE's limit of {baselines.MAX_DENSE_BYTES / 2**30:.0f} GiB "
                "(recsys.models.baselines.MAX_DENSE_BYTES)")
    available = _available_memory() if available is None else available
    if available is not None and need > 0.8 * available:
        return (f"benchmark guard: EASE on {train.n_items:,} items needs about {need / 2**30:.1f} GiB, "
                f"{available / 2**30:.1f} GiB available")
    return None


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def suite_ours(inter: Interactions, budget: float, seed: int) -> dict[str, Any]:
    """The default `recsys train --tune` path: model auto, `budget` seconds of search shared by the embedding
    models, the held-out metrics of the model it picks on validation."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quality-suite-") as out:
        try:
            report = train_and_bundle(inter, model="auto", tune_budget=budget, out=out, index=False, refit=False,
                                      seed=seed, common={"seed": seed, "progress": False})
        except RecsysError as exc:
            log.warning("ours failed: %s", exc)
            return {"failed": str(exc), "wall_s": time.perf_counter() - t0}
    metrics = report.metrics[report.model]
    return {"model": report.model, "ndcg@10": metrics["ndcg@10"], "recall@10": metrics["recall@10"],
            "seconds": report.seconds, "wall_s": time.perf_counter() - t0, "params": report.params,
            "tuning": report.tuning, "split": getattr(report, "split", None)}


def suite_peer(train: Interactions, test: Interactions, name: str, budget: float, n_trials: int | None,
               rounds: int, seed: int) -> dict[str, Any]:
    """`name` tuned with `budget` (recsys.tuning.tune, widening inside), refitted on `train`, evaluated on `test`; or declined."""
    reason = dense_refusal(name, train)
    if reason:
        log.warning("%s declined: %s", name, reason)
        return {"declined": reason}
    t0 = time.perf_counter()
    try:
        if name == "popularity":
            model, extra = make_model(name).fit(train), {}
        else:
            fixed = model_params(name, seed=seed, progress=False)
            # the library's own search, as ours gets: the same budget, ranges widened inside it
            result = tune(train, name, budget=None if n_trials else budget, n_trials=n_trials, fixed=fixed,
                          seed=seed, widen_rounds=rounds)
            widened = len(result.widened)
            tune_s = time.perf_counter() - t0
            model = make_model(name, **result.best_params).fit(train)
            extra = {"val_ndcg@10": result.best_value, "trials": result.n_trials, "widened": widened,
                     "tune_s": tune_s, "params": result.best_params}
        metrics = evaluate(model, test, 10)
    except RecsysError as exc:
        log.warning("%s declined: %s", name, exc)
        return {"declined": str(exc)}
    return {"ndcg@10": metrics["ndcg@10"], "recall@10": metrics["recall@10"],
            "wall_s": time.perf_counter() - t0, **extra}


def _ratio(ours: dict, peer: dict) -> float | None:
    if "ndcg@10" not in ours or not peer.get("ndcg@10"):
        return None
    return ours["ndcg@10"] / peer["ndcg@10"]


def suite_summary(logs: list[dict]) -> dict[str, Any]:
    ratios = [r["ratio_als"] for r in logs if r["ratio_als"] is not None]
    geomean = (0.0 if min(ratios) == 0 else math.exp(sum(map(math.log, ratios)) / len(ratios))) if ratios else None
    return {"logs": len(logs), "compared": len(ratios), "min_ratio_als": min(ratios) if ratios else None,
            "geomean_ratio_als": geomean,
            "pass": bool(logs) and len(ratios) == len(logs) and min(ratios) >= 1.0}


def run_suite(keys: list[str], budget: float | None, n_trials: int | None, rounds: int, smoke: bool, seed: int,
              out: Path) -> dict[str, Any]:
    """Every log in `keys` in turn; the JSON at `out` is rewritten after each, so a crash keeps what ran."""
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "smoke": smoke,
        "budget_override_s": budget, "peer_trials": n_trials, "widen_rounds": rounds, "seed": seed,
        "machine": f"{platform.machine()}, {platform.python_version()}", "logs": []}
    for key in keys:
        name, inter, weights, times = suite_log(key, smoke)
        log_budget = budget or (SMOKE_BUDGET if smoke else default_budget(inter))
        log.info("suite log %s: %d users x %d items, %d interactions; budget %.0f s", name, inter.n_users,
                 inter.n_items, inter.nnz, log_budget)
        ours = suite_ours(inter, log_budget, seed)
        train, test = holdout(inter, 0.2, seed)  # the split train_and_bundle made for ours
        peers_ = {p: suite_peer(train, test, p, log_budget, n_trials, rounds, seed)
                  for p in (*SUITE_PEERS, "popularity")}
        result["logs"].append({
            "key": key, "name": name, "users": inter.n_users, "items": inter.n_items, "interactions": inter.nnz,
            "train": train.nnz, "test": test.nnz, "weights": weights, "timestamps": times,
            "budget_s": log_budget, "ours": ours, "peers": peers_,
            "ratio_als": _ratio(ours, peers_["implicit_als"]), "ratio_ease": _ratio(ours, peers_["ease"])})
        result["summary"] = suite_summary(result["logs"])
        _write_json(out, result)
    return result


def suite_report(result: dict[str, Any]) -> str:
    budgets = sorted({r["budget_s"] for r in result["logs"]})
    lines = [(f"Quality suite ({result['date']}{', smoke' if result['smoke'] else ''}): per log, ours = "
              f"`recsys train --tune` (model auto, {'/'.join(f'{b:g}' for b in budgets)} s of search shared by "
              f"the embedding models) vs implicit ALS and EASE each tuned with the same budget (+ up to "
              f"{result['widen_rounds']} widening rounds) and Popularity, on the same holdout split; test "
              "NDCG@10, full ranking."),
             "",
             ("| log | users | items | interactions | weights | timestamps | ours model | ours NDCG@10 | "
              "implicit ALS | EASE | popularity | ours/ALS | ours/EASE | ours wall s |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in result["logs"]:
        ours, peers_ = r["ours"], r["peers"]
        for who, cell in (("ours", ours), *peers_.items()):
            for kind in ("failed", "declined"):
                if kind in cell:
                    notes.append(f"* {r['name']}: {who} {kind}: {cell[kind]}")
        lines.append(f"| {r['name']} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | {r['weights']} | "
                     f"{r['timestamps']} | {ours.get('model', 'failed')} | {_cell(ours)} | "
                     f"{_cell(peers_['implicit_als'])} | {_cell(peers_['ease'])} | {_cell(peers_['popularity'])} | "
                     f"{_num(r['ratio_als'], '.3f')} | {_num(r['ratio_ease'], '.3f')} | {ours['wall_s']:.0f} |")
    s = result["summary"]
    lines += ["", *notes, *([""] if notes else []),
              (f"ours / tuned implicit ALS over {s['compared']} of {s['logs']} logs: min "
               f"{_num(s['min_ratio_als'], '.3f')}, geometric mean {_num(s['geomean_ratio_als'], '.3f')}"),
              f"Target: ours >= 1.0 x tuned implicit ALS on every log: {'PASS' if s['pass'] else 'FAIL'}"]
    return "\n".join(lines)


def _cell(row: dict) -> str:
    return f"{row['ndcg@10']:.4f}" if "ndcg@10" in row else ("declined" if "declined" in row else "failed")


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    p.add_argument("--budget", type=float, default=None,
                   help="tuning seconds per model and round (default 150); with --suite, the budget of every "
                        "log for ours and peers alike (default: recsys.tuning.default_budget of the log)")
    p.add_argument("--trials", type=int, default=None, help="stop each search after this many trials")
    p.add_argument("--widen", type=int, default=1, help="widening rounds when a best value is on an edge")
    p.add_argument("--smoke", action="store_true", help="synthetic log, one trial per model (for tests)")
    p.add_argument("--suite", action="store_true", help="the robustness suite: ours vs peers on many logs")
    p.add_argument("--logs", default=",".join(suite_logs.KEYS), help="with --suite: comma-separated log keys")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default results/quality.json, with --suite "
                                               "results/quality_suite.json); the table goes next to it as .md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    trials = 1 if args.smoke and args.trials is None else args.trials
    rounds = 0 if args.smoke else args.widen
    out = Path(args.out or ROOT / "results" / ("quality_suite.json" if args.suite else "quality.json"))
    if args.suite:
        keys = [k for k in args.logs.split(",") if k]
        unknown = [k for k in keys if k not in suite_logs.KEYS]
        if unknown:
            p.error(f"unknown log(s) {unknown}; known: {list(suite_logs.KEYS)}")
        result = run_suite(keys, args.budget, trials, rounds, args.smoke, args.seed, out)
        text = suite_report(result)
    else:
        models = [m for m in args.models.split(",") if m]
        unknown = [m for m in models if m not in {*MODEL_NAMES, *MODEL_REGISTRY} or m not in SEARCH_SPACES]
        if unknown:
            p.error(f"unknown model(s) {unknown}; known: {sorted({*MODEL_NAMES, *MODEL_REGISTRY} & set(SEARCH_SPACES))}")
        budget = 150.0 if args.budget is None else args.budget
        result = run(models, budget, trials, rounds, args.smoke, args.seed)
        text = report(result)
        _write_json(out, result)
    print(text)
    out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
