"""The training job behind `recsys train`: split, early-stop, evaluate, refit on everything, bundle, publish.

1. Hold out each user's latest `test_fraction` of interactions (random when the log has no timestamps).
2. A validation split is carved from the training part the same way. On it, models with early stopping pick
   their number of epochs, `tune_budget` runs an Optuna search (recsys.tune), and model 'auto' picks the best
   embedding model. The test split is never looked at while choosing.
3. Refit on the whole training part with that many epochs and evaluate on the test split, beside Popularity.
4. Refit on all interactions (so the served model knows every user's latest items), build Annoy indexes
   tuned to `target_recall` (the engine still scans exactly where that measured faster), and write a new
   versioned bundle under `out`, holding the held-out metrics; then move `out/current` to it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .bundle import new_version_path, publish
from .data import TIE_BREAK, Interactions, holdout, tie_share
from .evaluation import evaluate
from .exceptions import DataValidationError
from .models import MODEL_NAMES, Popularity, make_model, model_params
from .tuning import choose

__all__ = ["TrainReport", "split_facts", "train_and_bundle",
           "tune_candidates"]

if TYPE_CHECKING:
    from .tuning import TuneResult

log = logging.getLogger("recsys")
EVAL_K = (10, 20)


@dataclass
class TrainReport:
    bundle: Path
    metrics: dict[str, dict[str, float]]  # model name -> held-out metrics
    params: dict[str, Any]
    seconds: float
    model: str = ""
    tuning: dict | None = None
    split: dict[str, Any] | None = None  # split_facts: protocol, seed, tied share and tie-break

    def table(self) -> pd.DataFrame:
        cols = [f"{m}@{k}" for k in EVAL_K for m in ("ndcg", "recall", "precision", "map", "hit_rate", "coverage")]
        frame = pd.DataFrame(self.metrics).T
        return frame[[c for c in cols if c in frame.columns]]


def split_facts(inter: Interactions, test_fraction: float, seed: int) -> dict[str, Any]:
    """How `holdout` splits `inter`: protocol, and for a timed log the share of tied positions and the tie-break."""
    if inter.timestamp is None:
        return {"protocol": "random holdout", "test_fraction": test_fraction, "seed": seed}
    share = tie_share(inter)
    if share > 0:
        log.info("%.1f%% of interactions share their user's timestamp with another; ties broken by a %s "
                 "(seed %d).", 100 * share, TIE_BREAK, seed)
    return {"protocol": "temporal holdout", "test_fraction": test_fraction, "seed": seed,
            "tied_share": round(share, 4), "tie_break": f"{TIE_BREAK} (seed {seed})"}


def tune_candidates(train: Interactions, model: str, *, budget: float | None, n_trials: int | None = None,
                    params: dict[str, Any] | None = None, common: dict[str, Any] | None = None,
                    validation_fraction: float = 0.2, seed: int = 0) -> list[TuneResult]:
    """recsys.tune for `model`; for 'auto', `tune_auto` (the closed-form models by trial count, then iALS
    first of the iterative ones, the others while they can still win; budget None: bounded by epochs).
    `params` are fixed for a named model; `common` (seed, progress,
    device) goes to whichever model accepts it."""
    from .tuning import AUTO_MODELS, tune, tune_auto

    common = common or {}
    if model == "auto":
        names = tuple(m for m in AUTO_MODELS if m in MODEL_NAMES)
        return tune_auto(train, budget=budget, fixed=lambda name: model_params(name, **common), models=names,
                         validation_fraction=validation_fraction, seed=seed)
    return [tune(train, model, budget=budget, n_trials=n_trials, fixed=model_params(model, params, **common),
                 validation_fraction=validation_fraction, seed=seed)]


progress = logging.getLogger("recsys.progress")  # one line per phase of a job; `recsys train` shows it


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Log `name` as it starts and its wall time as it ends (logger 'recsys.progress')."""
    progress.info("%s ...", name)
    start = time.perf_counter()
    yield
    progress.info("%s: done in %.1f s", name, time.perf_counter() - start)


def join_torchrun(model: str, tune_budget: float | None, inter: Interactions | None = None) -> bool:
    """Under torchrun (WORLD_SIZE > 1) join the process group (`recsys.distributed`); whether this process
    writes the bundle (rank 0, or a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return True
    if model not in ("ials", "mf") or tune_budget is not None:
        raise DataValidationError(
            f"Under torchrun (WORLD_SIZE={world}) `recsys train` trains one named model with fixed parameters: "
            f"got model={model!r}{' with --tune' if tune_budget is not None else ''}. Pass --model ials or mf "
            "(the models that train data-parallel), and tune in a single process first (recsys tune) if needed.")
    from . import distributed

    distributed.init()
    if inter is not None:  # every rank must have read the same log
        distributed.check_same("logs (users, items, pairs, weight sum)",
                               (inter.n_users, inter.n_items, inter.nnz, int(inter.weight.sum(dtype=np.float64))))
    return distributed.is_main()


def train_and_bundle(inter: Interactions, *, model: str = "mf", params: dict[str, Any] | None = None,
                     out: str | Path = "models", test_fraction: float = 0.2, refit: bool = True,
                     seed: int = 0, index: bool = True, target_recall: float = 0.95,
                     tune_budget: float | None = None, common: dict[str, Any] | None = None) -> TrainReport:
    """Run the whole job (see module docstring) and return where the bundle went and what it scored.

    model 'auto': the best on the validation split of recsys.tuning.AUTO_MODELS (popularity, the spectral filter,
    EASE where it is affordable, iALS, MF, two-tower).
    tune_budget: seconds of Optuna search (recsys.tune) on the validation split before the final fits; the
    chosen parameters and the search summary travel in the bundle's manifest. common: parameters such as
    seed / progress / device, passed to whichever model is trained when it accepts them.
    """
    start = time.perf_counter()
    common = dict(common or {})
    main = join_torchrun(model, tune_budget, inter)
    with phase("splitting"):
        split = split_facts(inter, test_fraction, seed)
        train, test = holdout(inter, test_fraction, seed)
    tuning = None
    if tune_budget is not None or model == "auto":
        with phase("choosing the model" if tune_budget is None else f"tuning ({tune_budget:.0f} s budget)"):
            results = tune_candidates(train, model, budget=tune_budget, n_trials=None if tune_budget else 1,
                                      params=params, common=common, validation_fraction=test_fraction, seed=seed)
        best = choose(results)
        model, params = best.estimator()
        params = dict(params)
        tuning = {**{k: v for k, v in best.to_dict().items() if k != "trials"},
                  "searched": tune_budget is not None, "budget_s": tune_budget,
                  # what a wall-clock bound cut (only with --tune): per model, the trials whose fit it ended
                  "candidates": {r.model: {"value": r.best_value, "confirmation": r.confirmation,
                                           "n_trials": r.n_trials, "params": r.best_params, "cut_by_time": r.cut}
                                 for r in results}}
        log.info("Chose %s (validation %s %.4f, confirmed %s)", model, best.metric, best.best_value,
                 "-" if best.confirmation is None else f"{best.confirmation:.4f}")
        if model == "popularity" and len(results) > 1:
            log.warning("No personalised model beat Popularity on the validation split (%s %.4f; the best other: "
                        "%s %.4f): bundling Popularity. This log may be too sparse or too popularity-driven "
                        "for them.", best.metric, best.best_value,
                        *max(((r.model, r.best_value) for r in results if r.model != "popularity"),
                             key=lambda p: p[1]))
    params = model_params(model, params, **common)
    candidate = make_model(model, **params)
    candidate._validate_params()
    if tuning is None and "epochs" in candidate.get_params():
        with phase(f"{model}: choosing epochs by early stopping on a validation split"):
            fit_part, valid = holdout(train, test_fraction, seed)
            best = make_model(model, **params).fit(fit_part, valid).exported_.extra["best_epoch"]
        params["epochs"] = int(best)
        log.info("Early stopping chose %d epochs", best)
    with phase(f"{model}: fitting on the training split"):
        evaluated = make_model(model, **params).fit(train)
    with phase("evaluating on the held-out split"):
        metrics = {model: evaluate(evaluated, test, EVAL_K)}
        if model != "popularity":
            metrics["popularity"] = evaluate(Popularity().fit(train), test, EVAL_K)
    if refit:
        with phase(f"{model}: refitting on every interaction"):
            final = make_model(model, **params).fit(inter)
    else:
        final = evaluated
    if not main:  # another rank of a torchrun job: rank 0 writes the bundle
        return TrainReport(Path(out), metrics, final.get_params(), time.perf_counter() - start, model, tuning, split)
    if index:
        with phase("building the retrieval index"):
            final.build_index(target_recall=target_recall, seed=seed)
    with phase("writing the bundle"):
        path = new_version_path(out, model)
        final.save(path, metrics=metrics[model],
                   evaluation={**split, "baselines": {k: v for k, v in metrics.items() if k != model},
                               "refit_on_all_data": refit},
                   data={"interactions": inter.nnz, "users": inter.n_users, "items": inter.n_items}, tuning=tuning)
        publish(out, path)
    return TrainReport(path, metrics, final.get_params(), time.perf_counter() - start, model, tuning, split)
