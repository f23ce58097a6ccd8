"""Sequence benchmark: SASRec beside the best set-based model on a leave-last-out split, in one run.

Protocol, per log:
  * `recsys.data.leave_last_out`: each user's last event (by time, ties by the seeded draw the splits use) is the
    test item, the one before it the validation item, the rest training; users with fewer than three events keep
    them all in training;
  * set-based: the model the default `recsys train` path picks (model auto, no --tune: `recsys.pipeline.tune_candidates`
    on the training + validation events with its own holdout), fitted on training + validation;
  * SASRec at its defaults: early stopping on the validation item, then refitted on training + validation for
    the epochs it chose;
  * iALS at its defaults fitted on training + validation, as a second reference;
  * all scored by `recsys.evaluate` on the test item: full ranking over the catalogue, the user's earlier items
    excluded, NDCG@10 and Recall@10 (= hit rate with one item per user).
Logs: the timed real logs of ../shared/datasets (ml-latest-small, Ciao, the Diginetica session sample) and two
generated logs, one with a planted order (after item a, its successor s(a) follows with probability 0.5) and the
same events with each user's times shuffled (no order to learn).

    .venv/bin/python benchmarks/sequence.py                          # every log (about 30 min on 2 cores)
    .venv/bin/python benchmarks/sequence.py --logs planted,unordered
    .venv/bin/python benchmarks/sequence.py --smoke                  # tiny generated logs (the test)

Writes benchmarks/results/sequence.json and sequence.md (the printed table).
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

import numpy as np
import real_logs

from recsys.data import Interactions, from_arrays, leave_last_out
from recsys.evaluation import evaluate, evaluate_per_user, ratio_interval
from recsys.models import make_model, model_params
from recsys.pipeline import tune_candidates
from recsys.tuning import choose

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("benchmarks.sequence")
REAL = ("movielens", "ciao", "diginetica")
GENERATED = ("planted", "unordered")
K = 10


def generated(name: str, n_users: int = 3000, n_items: int = 800, length: int = 30, follow: float = 0.5,
              seed: int = 0) -> Interactions:
    """Users walk the catalogue: each next item is the previous one's fixed successor with probability `follow`,
    else drawn by a Zipf-like popularity; 'unordered' shuffles each user's times (the same sets, no order)."""
    rng, shuffle = np.random.default_rng(seed), np.random.default_rng(seed + 1)  # the same walks either way
    successor = rng.permutation(n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    users, items, times = [], [], []
    for u in range(n_users):
        n = int(rng.integers(length // 3, length + 1))
        walk = [int(rng.choice(n_items, p=popularity))]
        while len(walk) < n:
            nxt = int(successor[walk[-1]]) if rng.random() < follow else int(rng.choice(n_items, p=popularity))
            if nxt not in walk:
                walk.append(nxt)
            elif len(set(walk)) >= n_items - 1:
                break
        t = np.arange(len(walk)) if name == "planted" else shuffle.permutation(len(walk))
        users += [f"u{u}"] * len(walk)
        items += [f"i{i}" for i in walk]
        times.append(t)
    return from_arrays(np.array(users), np.array(items), timestamp=np.concatenate(times).astype(np.int64))


def load(key: str, datasets: Path, smoke: bool) -> Interactions:
    if key in GENERATED:
        return generated(key, n_users=300, n_items=120, length=12) if smoke else generated(key)
    return real_logs.load(key, datasets)[1]


def set_based(train: Interactions, seed: int) -> tuple[str, dict]:
    """The model and parameters the default `recsys train` path (model auto, no --tune) picks on `train`."""
    best = choose(tune_candidates(train, "auto", budget=None, common={"seed": seed, "progress": False}, seed=seed))
    return best.estimator()


def sasrec(train: Interactions, valid: Interactions, full: Interactions, params: dict, seed: int):
    """SASRec with early stopping on `valid`, refitted on `full` for the epochs it chose."""
    params = model_params("sasrec", params, seed=seed, progress=False)
    chosen = make_model("sasrec", **params).fit(train, valid).exported_.extra["best_epoch"]
    return make_model("sasrec", **{**params, "epochs": int(chosen)}).fit(full), int(chosen)


def run_log(key: str, args: argparse.Namespace) -> dict:
    inter = load(key, args.datasets, args.smoke)
    train, valid, test = leave_last_out(inter, seed=args.seed)
    full = Interactions(train.users, train.items, np.concatenate([train.user_index, valid.user_index]),
                        np.concatenate([train.item_index, valid.item_index]),
                        np.concatenate([train.weight, valid.weight]),
                        np.concatenate([train.timestamp, valid.timestamp]), train.item_metadata)
    row = {"log": key, "users": inter.n_users, "items": inter.n_items, "interactions": inter.nnz,
           "test_users": len(np.unique(test.user_index))}
    start = time.perf_counter()
    name, params = set_based(full, args.seed)
    base = make_model(name, **model_params(name, params, seed=args.seed, progress=False)).fit(full)
    row["set_based"] = {"model": name, "seconds": round(time.perf_counter() - start, 1),
                        **evaluate(base, test, K, train=full)}
    ials = make_model("ials", **model_params("ials", seed=args.seed, progress=False)).fit(full)
    row["ials"] = evaluate(ials, test, K, train=full)  # iALS at its defaults, what the issue compares with too
    start = time.perf_counter()
    seq, epochs = sasrec(train, valid, full, {"epochs": 3} if args.smoke else {}, args.seed)
    row["sasrec"] = {"epochs": epochs, "seconds": round(time.perf_counter() - start, 1),
                     **evaluate(seq, test, K, train=full)}
    metric = f"ndcg@{K}"
    row["sasrec_vs_set_based"] = row["sasrec"][metric] / max(row["set_based"][metric], 1e-12)
    ours, theirs, plain = (evaluate_per_user(m, test, K, train=full)[metric] for m in (seq, base, ials))
    row["sasrec_vs_set_based_ci"] = list(ratio_interval(ours, theirs, seed=args.seed)[1:])
    row["sasrec_vs_ials"], *row["sasrec_vs_ials_ci"] = ratio_interval(ours, plain, seed=args.seed)
    log.info("%s: %s %.4f, SASRec %.4f (%.3f x)", key, name, row["set_based"][metric], row["sasrec"][metric],
             row["sasrec_vs_set_based"])
    return row


def table(rows: list[dict]) -> str:
    header = ("| log | users | items | set-based (default path) | its NDCG@10 | iALS (defaults) NDCG@10 | SASRec NDCG@10 "
              "| SASRec / set-based [95 %] | SASRec / iALS [95 %] | set-based s | SASRec s |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["sasrec_vs_set_based_ci"]
        ials_low, ials_high = r["sasrec_vs_ials_ci"]
        lines.append(f"| {r['log']} | {r['users']:,} | {r['items']:,} | {r['set_based']['model']} | "
                     f"{r['set_based']['ndcg@10']:.4f} | {r['ials']['ndcg@10']:.4f} | {r['sasrec']['ndcg@10']:.4f} | "
                     f"{r['sasrec_vs_set_based']:.3f} [{low:.3f}, {high:.3f}] | "
                     f"{r['sasrec_vs_ials']:.3f} [{ials_low:.3f}, {ials_high:.3f}] | {r['set_based']['seconds']:.0f} | "
                     f"{r['sasrec']['seconds']:.0f} |")
    return "\n".join(lines)


def write(out: Path, command: str, smoke: bool, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "command": command, "machine": platform.platform(), "smoke": smoke, "logs": rows},
                              indent=1))
    out.with_suffix(".md").write_text(f"# SASRec vs the set-based default, leave-last-out\n\ncommand: {command}\n\n"
                                      f"{table(rows)}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", default=",".join(REAL + GENERATED), help="comma-separated (default: every log)")
    p.add_argument("--datasets", type=Path, default=real_logs.DEFAULT_DATASETS)
    p.add_argument("--smoke", action="store_true", help="tiny generated logs, three SASRec epochs (the test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "sequence.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    keys = [k for k in args.logs.split(",") if k]
    unknown = sorted(set(keys) - set(REAL + GENERATED))
    if unknown:
        p.error(f"unknown --logs {unknown}; choose among {list(REAL + GENERATED)}")
    rows: list[dict] = []
    command = ("benchmarks/sequence.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    for key in keys:
        try:
            rows.append(run_log(key, args))
        except real_logs.MissingLog as err:
            log.warning("%s skipped: %s", key, err)
            continue
        write(args.out, command, args.smoke, rows)  # after every log: a long run keeps what it measured
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
