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

--real is the yardstick that cannot flatter: every real log of ../shared/datasets (benchmarks/real_logs.py) and
every generated suite log, each on its own holdout split: ours (`recsys train --tune`: model auto, the default
budget; and the default path without --tune) beside implicit ALS and EASE tuned TO CONVERGENCE (not by time) by
a neighbourhood search on log grids widened until the best is strictly interior on every axis
(benchmarks/peers.py, grid_search), on a validation split carved from the training part. The peers' results
are cached per log, split and search space (results/quality_real_peers.json, written after every fit):

    .venv/bin/python benchmarks/quality.py --real                        # every log (many hours: see the README)
    .venv/bin/python benchmarks/quality.py --real --logs movielens,ciao  # a rerun reuses the cached peers
    .venv/bin/python benchmarks/quality.py --real --smoke                # first users of two logs, tiny grids
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent

import peers  # registers implicit_als / implicit_bpr
import real_logs
import suite_logs

from recsys.data import Interactions, holdout, read_interactions, temporal_split, tie_share
from recsys.datasets import load_movielens, make_synthetic
from recsys.engine import load_engine
from recsys.evaluation import evaluate, evaluate_per_user, ratio_interval
from recsys.exceptions import RecsysError
from recsys.models import MODEL_NAMES, MODEL_REGISTRY, make_model, model_class, model_params
from recsys.pipeline import train_and_bundle
from recsys.tuning import EMBEDDING_MODELS, TuneResult, default_budget, search_space, tune

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
    space = {**{k: str(v) for k, v in search_space(name).items()}, **best.widened}
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


def suite_ours(inter: Interactions, budget: float | None, seed: int, test: Interactions | None = None
               ) -> dict[str, Any]:
    """The default `recsys train --tune` path: model auto, `budget` seconds of search shared by the embedding
    models, the held-out metrics of the model it picks on validation. With `test` (the split train_and_bundle
    holds out), also its per-user NDCG@10 there ("per_user", for the ratios' intervals)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quality-suite-") as out:
        try:
            report = train_and_bundle(inter, model="auto", tune_budget=budget, out=out, index=False, refit=False,
                                      seed=seed, common={"seed": seed, "progress": False})
        except RecsysError as exc:
            log.warning("ours failed: %s", exc)
            return {"failed": str(exc), "wall_s": time.perf_counter() - t0}
        per_user = None if test is None else evaluate_per_user(load_engine(report.bundle)[0], test)["ndcg@10"]
    metrics = report.metrics[report.model]
    return {"model": report.model, "ndcg@10": metrics["ndcg@10"], "recall@10": metrics["recall@10"],
            "seconds": report.seconds, "wall_s": time.perf_counter() - t0, "params": report.params,
            "tuning": report.tuning, "split": getattr(report, "split", None), "per_user": per_user}


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
        ours.pop("per_user", None)
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


# ------------------------------------------------------------------------------------------------ --real
# Every real log of ../shared/datasets (benchmarks/real_logs.py) and every generated suite log, each on its own
# holdout split: ours (`recsys train --tune`, and the same without --tune) beside implicit ALS and EASE tuned
# to convergence on a validation split of the training part (peers.grid_search), cached per split.
REAL_PEERS = ("implicit_als", "ease")
SEARCH_VERSION = 1       # bump when the search itself changes (the space's own definition is hashed as well)
SMOKE_USERS = 40         # --real --smoke: the first users of each real log
SMOKE_REAL_LOGS = ("movielens", "retailrocket")
GENERATED_KEYS = tuple(k for k in suite_logs.KEYS if k != suite_logs.MOVIELENS)
REAL_ALL_KEYS = (*real_logs.REAL_KEYS, *GENERATED_KEYS)


PATH_NAMES = {"ours": "ours (--tune)", "default": "the default path"}  # the two paths a row measures


@dataclasses.dataclass(frozen=True)
class RealOptions:
    seed: int = 0
    smoke: bool = False
    retune: bool = False               # search the peers again, ignoring the cache
    refine: int | None = None          # refinement rounds of the peers' grids (None: the space's own)
    budget: float | None = None        # ours' tuning budget (None: what `recsys train --tune` spends)
    ease_max_bytes: int | None = None  # EASE's memory bound (None: the library's default)
    keep: str | None = None            # "ours" (--tune) or "default": kept from the saved row, the other measured


class PeerCache:
    """The peers' tuned results, one JSON object keyed by `peer_cache_key`, rewritten (atomically) after every
    fit: an interrupted search resumes from its points, a finished one is reused without searching. A write
    re-reads the file under a lock and changes only its own key, so two runs (a --peers-only search beside a
    timed run) can share one cache."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                self.entries = {**json.loads(self.path.read_text()), key: entry}
            self.entries[key] = entry
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries, indent=1, default=str))
            os.replace(tmp, self.path)


def split_signature(train: Interactions, test: Interactions, seed: int) -> str:
    return f"u{train.n_users}-i{train.n_items}-train{train.nnz}-test{test.nnz}-seed{seed}"


def peer_cache_key(log_key: str, signature: str, peer: str, space: peers.Space, fixed: dict) -> str:
    definition = json.dumps({"space": space.describe(), "fixed": fixed}, sort_keys=True, default=str)
    digest = hashlib.sha1(definition.encode()).hexdigest()[:10]
    return f"{log_key}|{signature}|{peer}|v{SEARCH_VERSION}-{digest}"


def peer_space(name: str, train: Interactions, opts: RealOptions) -> tuple[peers.Space, dict]:
    """The grid of `name` on `train` and its fixed parameters; use_weights is searched only where it can matter."""
    if name == "ease":
        space = peers.ease_space(opts.smoke)
        fixed = {} if opts.ease_max_bytes is None else {"max_bytes": opts.ease_max_bytes}
    else:
        weighted = bool(train.nnz) and float(np.ptp(train.weight)) > 0
        space, fixed = peers.als_space(weighted, opts.smoke), {"iterations": 3 if opts.smoke else 15}
    if opts.refine is not None:
        space = dataclasses.replace(space, refine=opts.refine)
    return space, model_params(name, fixed, seed=opts.seed)


def ease_form(train: Interactions, max_bytes: int | None, available: int | None = None
              ) -> tuple[dict[str, Any], str | None]:
    """The form EASE will take on `train` (recsys.models.baselines.choose_form: dense, Woodbury, or dense on the
    most popular items that fit, 'head') and why the benchmark declines it, or None: the library refuses it (no
    form within `max_bytes`), or it needs more than 80% of the machine's available memory."""
    from recsys.models import baselines

    bound = baselines.MAX_DENSE_BYTES if max_bytes is None else max_bytes
    form, n_model, need = baselines.choose_form(train.n_users, train.n_items, bound)
    facts = {"form": form, "items_modelled": n_model, "memory_gib": need / 2**30}
    if need > bound:
        return facts, (f"the library refuses it: even its smallest form ({form}, {n_model:,} of {train.n_items:,} "
                       f"items) needs {need / 2**30:.1f} GiB, over max_bytes {bound / 2**30:.1f} GiB")
    available = _available_memory() if available is None else available
    if available is not None and need > 0.8 * available:
        return facts, (f"benchmark guard: EASE's {form} form on {train.n_items:,} items needs about "
                       f"{need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available")
    return facts, None


def validation_objective(name: str, fixed: dict, fit_part: Interactions, valid: Interactions,
                         timings: list[float]) -> Callable[[dict[str, Any]], float]:
    """params -> validation NDCG@10 of `name` fitted on `fit_part`; each call's seconds go to `timings`."""
    def objective(params: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        value = evaluate(make_model(name, **fixed, **params).fit(fit_part), valid, 10)["ndcg@10"]
        timings.append(time.perf_counter() - t0)
        return value
    return objective


def tune_peer(name: str, log_key: str, train: Interactions, test: Interactions, cache: PeerCache,
              opts: RealOptions) -> dict[str, Any]:
    """`name` searched to convergence on a validation split of `train`, refitted on `train`, scored on `test`;
    from the cache when this split and search were done before (unless `opts.retune`); or declined."""
    space, fixed = peer_space(name, train, opts)
    facts: dict[str, Any] = {}
    if name == "ease":
        facts, reason = ease_form(train, opts.ease_max_bytes)
        if reason:
            log.warning("%s declined: %s", name, reason)
            return {"declined": reason, **facts}
    signature = split_signature(train, test, opts.seed)
    key = peer_cache_key(log_key, signature, name, space, fixed)
    entry = None if opts.retune else cache.get(key)
    if entry and "result" in entry:
        log.info("%s: cached (%d points), test ndcg@10 %.4f; refitted for its per-user scores", name,
                 entry["result"]["points"], entry["result"]["ndcg@10"])
        per_user = evaluate_per_user(make_model(name, **entry["result"]["params"]).fit(train), test)["ndcg@10"]
        return {**entry["result"], "fits": 0, "cached": True, "per_user": per_user}
    entry = entry or {"log": log_key, "peer": name, "signature": signature, "space": space.describe(),
                      "fixed": fixed, "points": []}
    known = {tuple(p["point"]): p["val_ndcg@10"] for p in entry["points"]}
    timings: list[float] = []

    def record(point: peers.Point, params: dict[str, Any], value: float) -> None:
        entry["points"].append({"point": list(point), "params": params, "val_ndcg@10": value, "fit_s": timings[-1]})
        cache.put(key, entry)
        log.info("%s %s: validation ndcg@10 %.4f (%.1f s)", name, _params_text(params), value, timings[-1])

    t0 = time.perf_counter()
    try:
        fit_part, valid = holdout(train, 0.2, opts.seed)
        search = peers.grid_search(space, validation_objective(name, fixed, fit_part, valid, timings),
                                   known=known, on_point=record)
        search_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        final = make_model(name, **fixed, **search.best_params).fit(train)
        metrics, per_user = evaluate(final, test, 10), evaluate_per_user(final, test)["ndcg@10"]
    except (RecsysError, MemoryError) as exc:
        log.warning("%s declined: %s", name, exc)
        return {"declined": f"{type(exc).__name__}: {exc}", **facts}
    result = {"params": {**fixed, **search.best_params}, **facts, "val_ndcg@10": search.best_value,
              "ndcg@10": metrics["ndcg@10"], "recall@10": metrics["recall@10"], "points": len(search.values),
              "converged": search.converged, "edges": search.edges,
              "at_ceiling": sorted(a for a, side in search.edges.items() if side == "ceiling"),
              "search_s": search_s + sum(p["fit_s"] for p in entry["points"][:len(known)]),
              "final_fit_s": time.perf_counter() - t1}
    entry["result"] = result
    cache.put(key, entry)
    log.info("%s: best %s, validation %.4f, test ndcg@10 %.4f after %d points (%d fitted now)%s", name,
             _params_text(search.best_params), search.best_value, metrics["ndcg@10"], len(search.values),
             search.fits, "" if search.converged else " NOT CONVERGED")
    return {**result, "fits": search.fits, "cached": False, "per_user": per_user}


def real_log(key: str, root: Path, smoke: bool) -> tuple[str, Interactions, dict[str, Any]]:
    """(name, interactions, shape facts) of a real log (from `root`) or a generated suite log."""
    if key in real_logs.REAL_KEYS:
        spec, inter = real_logs.load(key, root, SMOKE_USERS if smoke else None)
        name, weights, source = spec.name, spec.weights, "real"
    else:
        name, inter, weights, _ = suite_log(key, smoke)
        source = "generated"
    return name, inter, {"source": source, "weights": weights, "timed": inter.timestamp is not None,
                         "tie_share": tie_share(inter)}


def best_peer(peers_: dict[str, dict]) -> str | None:
    scored = {p: r["ndcg@10"] for p, r in peers_.items() if "ndcg@10" in r}
    return max(scored, key=scored.__getitem__) if scored else None


def _ours_cell(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("model", "ndcg@10", "recall@10", "seconds", "wall_s", "params", "failed", "per_user")
    cell = {k: row[k] for k in keep if k in row}
    candidates = (row.get("tuning") or {}).get("candidates", {})
    # what the auto path measured on validation (and on its confirmation split), model by model
    cell["candidates"] = {m: {"value": c["value"], "confirmation": c.get("confirmation"), "trials": c["n_trials"]}
                          for m, c in candidates.items()}
    return cell


def _geomean(values: list[float]) -> float | None:
    if not values:
        return None
    return 0.0 if min(values) <= 0 else math.exp(sum(map(math.log, values)) / len(values))


def real_summary(logs: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {"logs": len(logs)}
    for field in ("ours_vs_best_peer", "default_vs_als"):
        ratios = [r[field] for r in logs if r[field] is not None]
        out[field] = {"compared": len(ratios), "min": min(ratios) if ratios else None, "geomean": _geomean(ratios),
                      "pass": bool(logs) and len(ratios) == len(logs) and min(ratios) >= 1.0}
    return out


def real_one(key: str, root: Path, cache: PeerCache, opts: RealOptions, kept: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """One log's row. With `opts.keep` ("ours" or "default"), that path's cell is `kept`'s (the saved row of this
    log, which `run_real` checks exists before it starts; the row names its run in `ours_run_date` or
    `default_run_date`) and only the other path runs."""
    name, inter, facts = real_log(key, root, opts.smoke)
    train, test = holdout(inter, 0.2, opts.seed)  # the split train_and_bundle makes for ours
    # what `recsys train --tune` spends on this log (the CLI's default_budget of the whole log)
    budget = opts.budget or (SMOKE_BUDGET if opts.smoke else default_budget(inter))
    log.info("real log %s: %d users x %d items, %d interactions; ours' budget %.0f s", name, inter.n_users,
             inter.n_items, inter.nnz, budget)
    ours, default = (kept[path] if opts.keep == path else _ours_cell(suite_ours(inter, b, opts.seed, test))
                     for path, b in (("ours", budget), ("default", None)))
    peers_ = {p: tune_peer(p, key, train, test, cache, opts) for p in REAL_PEERS}
    top = best_peer(peers_)
    # per-user scores pair up over the same test users: the ratios' paired bootstrap intervals, then dropped
    scores = {id(cell): cell.pop("per_user", None) for cell in (ours, default, *peers_.values())}
    return {"key": key, "name": name, "users": inter.n_users, "items": inter.n_items, "interactions": inter.nnz,
            "train": train.nnz, "test": test.nnz, **facts, "budget_s": budget,
            **({f"{opts.keep}_run_date": kept.get(f"{opts.keep}_run_date", kept["run_date"])} if opts.keep else {}),
            "ours": ours, "default": default,
            "peers": peers_, "best_peer": top,
            "ours_vs_best_peer": _ratio(ours, peers_[top]) if top else None,
            "ours_vs_best_peer_ci": _interval(scores, ours, peers_[top]) if top else None,
            "default_vs_als": _ratio(default, peers_["implicit_als"]),
            "default_vs_als_ci": _interval(scores, default, peers_["implicit_als"])}


def _interval(scores: dict[int, np.ndarray | None], ours: dict, peer: dict) -> list[float] | None:
    """The 95 % paired bootstrap interval of ours / peer over the test users (`ratio_interval`), None where a
    cell's per-user scores are not at hand (a kept cell of an earlier run, a failed or declined one)."""
    a, b = scores.get(id(ours)), scores.get(id(peer))
    return None if a is None or b is None else list(ratio_interval(a, b)[1:])


def run_real(keys: list[str], root: Path, cache_path: Path, opts: RealOptions, out: Path,
             append: bool = False) -> dict[str, Any]:
    """Every log in `keys` in turn; the JSON at `out` is rewritten after each, so a crash keeps what ran.
    append: keep the rows already in `out` (each row names the run that measured it), each replaced when its
    log runs again (a crash leaves the saved row). With `opts.keep` every log must have a saved row, checked
    before anything runs."""
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    earlier = json.loads(out.read_text()) if append and out.exists() else {}
    saved = {r["key"]: {"run_date": earlier["date"], **r} for r in earlier.get("logs", [])}
    missing = [key for key in keys if key not in saved]
    if opts.keep and missing:
        flag = "--default-only" if opts.keep == "ours" else "--tune-only"
        raise ValueError(f"{flag}: no saved row for log(s) {missing} to keep {PATH_NAMES[opts.keep]} from: run "
                         f"them without {flag} first, or leave them out of --logs")
    result: dict[str, Any] = {
        "date": date, "runs": [*earlier.get("runs", [earlier["date"]] if earlier else []), date],
        "smoke": opts.smoke, "seed": opts.seed, "datasets": str(root), "peer_cache": str(cache_path),
        "search_version": SEARCH_VERSION, "options": dataclasses.asdict(opts),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "logs": list(saved.values()), "skipped": []}
    cache = PeerCache(cache_path)
    for key in keys:
        try:
            row = {"run_date": date, **real_one(key, root, cache, opts, saved.get(key))}
        except real_logs.MissingLog as exc:
            log.warning("log %s skipped: %s", key, exc)
            result["skipped"].append({"key": key, "reason": str(exc)})
        else:
            at = next((i for i, r in enumerate(result["logs"]) if r["key"] == key), None)
            if at is None:
                result["logs"].append(row)
            else:
                result["logs"][at] = row
        result["summary"] = real_summary(result["logs"])
        _write_json(out, result)
    return result


def real_report(result: dict[str, Any]) -> str:
    runs = ", ".join(result.get("runs", [result["date"]]))
    lines = [(f"Quality on real and generated logs (runs {runs}{', smoke' if result['smoke'] else ''}): per "
              "log, its own holdout split (each user's latest 20%, a random 20% where untimed); ours = `recsys "
              "train --tune` (model auto, the default budget) and the default path without --tune; implicit ALS "
              "and EASE tuned to convergence by a neighbourhood grid search on a validation split of the training "
              "part, refitted on it; test NDCG@10, full ranking."),
             "",
             ("| log | source | users | items | interactions | timed | ours | ours NDCG@10 | default | "
              "default NDCG@10 | implicit ALS | ALS best | EASE | ours/best peer | default/ALS |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = [f"* {s['key']}: skipped: {s['reason']}" for s in result["skipped"]]
    for r in result["logs"]:
        als = r["peers"]["implicit_als"]
        notes += _real_notes(r)
        for kept, other in (("ours", "default"), ("default", "ours")):
            if f"{kept}_run_date" in r:
                notes.append(f"* {r['name']}: {PATH_NAMES[kept]} measured in the run of {r[f'{kept}_run_date']}, "
                             f"{PATH_NAMES[other]} in the run of {r['run_date']}")
        lines.append(
            f"| {r['name']} | {r['source']} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | "
            f"{'yes' if r['timed'] else 'no'} | {model_text(r['ours'])} | {_cell(r['ours'])} | "
            f"{model_text(r['default'])} | {_cell(r['default'])} | {_peer_cell(als)} | "
            f"{_params_text(als.get('params', {}), skip=('seed', 'iterations'))} | {_peer_cell(r['peers']['ease'])} | "
            f"{_with_interval(r, 'ours_vs_best_peer')} | {_with_interval(r, 'default_vs_als')} |")
    s = result["summary"]
    lines += ["", ("(c): the peer's tuned result was read from the peer cache, not searched in this run. "
              "[low, high]: the ratio's 95 % paired bootstrap interval over the log's test users (rows run before "
              "the intervals were added have none)."),
              *notes, ""]
    for field, words in (("ours_vs_best_peer", "ours (--tune) / best tuned peer"),
                         ("default_vs_als", "default (no --tune) / tuned implicit ALS")):
        f = s[field]
        lines.append(f"{words} over {f['compared']} of {s['logs']} logs: min {_num(f['min'], '.3f')}, geometric "
                     f"mean {_num(f['geomean'], '.3f')}: {'PASS' if f['pass'] else 'FAIL'} (>= 1.0 on every log)")
    return "\n".join(lines)


def model_text(cell: dict[str, Any]) -> str:
    """The model ours bundled; a blend with its components and weights: 'blend (ials 0.7 + spectral 0.3)', the
    members of an average counted: 'blend (3 ials 0.7 + spectral 0.3)', 'average of 3 ials'."""
    model = cell.get("model", "failed")
    params = cell.get("params") or {}
    if model != "blend" or "components" not in params:
        return model
    shares: dict[str, list[float]] = {}
    for (name, _), weight in zip(params["components"], params["weights"]):
        shares.setdefault(name, []).append(weight)
    if len(shares) == 1:
        (name, weights), = shares.items()
        return f"average of {len(weights)} {name}"
    parts = [f"{f'{len(w)} ' if len(w) > 1 else ''}{name} {round(sum(w), 3):g}" for name, w in shares.items()]
    return f"blend ({' + '.join(parts)})"


def _peer_cell(row: dict[str, Any]) -> str:
    if "ndcg@10" not in row:
        return "declined"
    return f"{row['ndcg@10']:.4f}{' (c)' if row.get('cached') else ''}"


def _real_notes(r: dict[str, Any]) -> list[str]:
    notes = []
    for who, cell in (("ours", r["ours"]), ("default", r["default"]), *r["peers"].items()):
        for kind in ("failed", "declined"):
            if kind in cell:
                notes.append(f"* {r['name']}: {who} {kind}: {cell[kind]}")
        if cell.get("form") == "head":  # dense and Woodbury are the exact model; the head is not
            notes.append(f"* {r['name']}: {who} in its head form: only the {cell['items_modelled']:,} most popular "
                         f"of {r['items']:,} items modelled ({cell['memory_gib']:.1f} GiB; --ease-max-gib raises it)")
        if "converged" in cell:
            state = "converged" if cell["converged"] else "NOT converged (fit cap)"
            bound = f", at a declared bound: {cell['edges']}" if cell["edges"] else ", interior on every axis"
            notes.append(f"* {r['name']}: {who} {state} after {cell['points']} grid points "
                         f"({cell['fits']} fitted in this run{', cached' if cell['cached'] else ''}){bound}")
    return notes


def _params_text(params: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items() if k not in skip)


def _cell(row: dict) -> str:
    return f"{row['ndcg@10']:.4f}" if "ndcg@10" in row else ("declined" if "declined" in row else "failed")


def _with_interval(row: dict[str, Any], field: str) -> str:
    interval = row.get(f"{field}_ci")
    return _num(row[field], ".3f") + ("" if not interval else f" [{interval[0]:.3f}, {interval[1]:.3f}]")


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
                        "log for ours and peers alike (default: recsys.tuning.default_budget of the log); with "
                        "--real, ours' budget only (for quick checks: the peers search to convergence)")
    p.add_argument("--trials", type=int, default=None, help="stop each search after this many trials")
    p.add_argument("--widen", type=int, default=1, help="widening rounds when a best value is on an edge")
    p.add_argument("--smoke", action="store_true", help="synthetic log, one trial per model (for tests)")
    p.add_argument("--suite", action="store_true", help="the robustness suite: ours vs peers on many logs")
    p.add_argument("--real", action="store_true",
                   help="every real log of --datasets and every generated log: ours vs peers tuned to convergence")
    p.add_argument("--logs", default=None,
                   help=f"with --suite or --real: comma-separated log keys (--suite: {','.join(suite_logs.KEYS)}; "
                        f"--real: {','.join(REAL_ALL_KEYS)}; default all, --real --smoke: "
                        f"{','.join((*SMOKE_REAL_LOGS, *GENERATED_KEYS))})")
    p.add_argument("--datasets", type=Path, default=real_logs.DEFAULT_DATASETS,
                   help="with --real: the folder of real logs (default ../shared/datasets)")
    p.add_argument("--peer-cache", type=Path, default=None,
                   help="with --real: the peers' tuned results (default results/quality_real_peers.json, "
                        "with --smoke results/quality_real_smoke_peers.json)")
    p.add_argument("--peers-only", action="store_true",
                   help="with --real: search and cache the peers of each log, nothing else (untimed; fills the "
                        "peer cache so that the timed run can follow on an idle machine)")
    p.add_argument("--report", action="store_true",
                   help="with --real: print and write the table of the output JSON as it is, running nothing")
    p.add_argument("--append", action="store_true",
                   help="with --real: keep the other logs' rows already in the output JSON (each row names its run)")
    p.add_argument("--default-only", action="store_true",
                   help="with --real --append: run only the default path (no --tune) of each log, keeping ours "
                        "(--tune) from the saved row (for a change that only the default path sees)")
    p.add_argument("--tune-only", action="store_true",
                   help="with --real --append: run only ours (--tune) of each log, keeping the default path from "
                        "the saved row (for a change that only --tune sees)")
    p.add_argument("--retune", action="store_true", help="with --real: search the peers again, ignoring the cache")
    p.add_argument("--refine", type=int, default=None,
                   help="with --real: half-step refinement rounds of the peers' grids (default 1, smoke 0)")
    p.add_argument("--ease-max-gib", type=float, default=None,
                   help="with --real: EASE's memory bound, max_bytes (default the library's, 6 GiB; past it EASE "
                        "models only the most popular items that fit: raise it for the full model on wide logs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default results/quality.json, with --suite "
                                               "results/quality_suite.json, with --real results/quality_real.json "
                                               "or quality_real_smoke.json); the table goes next to it as .md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    trials = 1 if args.smoke and args.trials is None else args.trials
    rounds = 0 if args.smoke else args.widen
    if args.real:
        return main_real(p, args)
    out = Path(args.out or ROOT / "results" / ("quality_suite.json" if args.suite else "quality.json"))
    if args.suite:
        keys = [k for k in (args.logs or ",".join(suite_logs.KEYS)).split(",") if k]
        unknown = [k for k in keys if k not in suite_logs.KEYS]
        if unknown:
            p.error(f"unknown log(s) {unknown}; known: {list(suite_logs.KEYS)}")
        result = run_suite(keys, args.budget, trials, rounds, args.smoke, args.seed, out)
        text = suite_report(result)
    else:
        models = [m for m in args.models.split(",") if m]
        tunable = sorted(m for m in {*MODEL_NAMES, *MODEL_REGISTRY} - {"base"} if model_class(m).search_space is not None)
        unknown = [m for m in models if m not in tunable]
        if unknown:
            p.error(f"unknown model(s) {unknown}; known: {tunable}")
        budget = 150.0 if args.budget is None else args.budget
        result = run(models, budget, trials, rounds, args.smoke, args.seed)
        text = report(result)
        _write_json(out, result)
    print(text)
    out.with_suffix(".md").write_text(text + "\n")
    return 0


def main_real(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    default_keys = (*SMOKE_REAL_LOGS, *GENERATED_KEYS) if args.smoke else REAL_ALL_KEYS
    keys = [k for k in args.logs.split(",") if k] if args.logs else list(default_keys)
    unknown = [k for k in keys if k not in REAL_ALL_KEYS]
    if unknown:
        p.error(f"unknown log(s) {unknown}; known: {list(REAL_ALL_KEYS)}")
    stem = "quality_real_smoke" if args.smoke else "quality_real"
    out = Path(args.out or ROOT / "results" / f"{stem}.json")
    cache = args.peer_cache or ROOT / "results" / f"{stem}_peers.json"
    if (args.default_only or args.tune_only) and not args.append:
        p.error("--default-only and --tune-only need --append (they keep the other path from the saved rows)")
    if args.default_only and args.tune_only:
        p.error("--default-only and --tune-only exclude each other")
    opts = RealOptions(seed=args.seed, smoke=args.smoke, retune=args.retune, refine=args.refine, budget=args.budget,
                       keep="ours" if args.default_only else "default" if args.tune_only else None,
                       ease_max_bytes=None if args.ease_max_gib is None else int(args.ease_max_gib * 2**30))
    if args.peers_only:
        for key in keys:
            _, inter, _ = real_log(key, args.datasets, opts.smoke)
            train, test = holdout(inter, 0.2, opts.seed)
            found = {p: tune_peer(p, key, train, test, PeerCache(cache), opts) for p in REAL_PEERS}
            print(key, {p: r.get("ndcg@10", r.get("declined")) for p, r in found.items()}, flush=True)
        return 0
    result = json.loads(out.read_text()) if args.report else run_real(keys, args.datasets, cache, opts, out,
                                                                       append=args.append)
    text = real_report(result)
    print(text)
    out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
