"""The training job behind `recsys train`: split, early-stop, evaluate, refit on everything, bundle, publish.

1. Hold out each user's latest `test_fraction` of interactions (random when the log has no timestamps).
2. Models with early stopping carve a validation split from the training part the same way and pick the
   number of epochs on it (the test split is never looked at while choosing).
3. Refit on the whole training part with that many epochs and evaluate on the test split, beside Popularity.
4. Refit on all interactions (so the served model knows every user's latest items), build Annoy indexes
   tuned to `target_recall` (the engine still scans exactly where that measured faster), and write a new
   versioned bundle under `out`, holding the held-out metrics; then move `out/current` to it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import artifacts
from .data import Interactions, random_split, temporal_split
from .evaluate import evaluate
from .exceptions import DataValidationError
from .models import MODEL_REGISTRY, Popularity, Recommender

log = logging.getLogger("recsys")
EVAL_K = (10, 20)


@dataclass
class TrainReport:
    bundle: Path
    metrics: dict[str, dict[str, float]]  # model name -> held-out metrics
    params: dict[str, Any]
    seconds: float

    def table(self) -> pd.DataFrame:
        cols = [f"{m}@{k}" for k in EVAL_K for m in ("ndcg", "recall", "precision", "map", "hit_rate", "coverage")]
        frame = pd.DataFrame(self.metrics).T
        return frame[[c for c in cols if c in frame.columns]]


def make_model(name: str, **params: Any) -> Recommender:
    if name not in MODEL_REGISTRY or name == "base":
        known = sorted(n for n in MODEL_REGISTRY if n != "base")
        raise DataValidationError(f"Unknown model {name!r}. Choose one of {known} (CLI: --model).")
    return MODEL_REGISTRY[name](**params)


def holdout(inter: Interactions, test_fraction: float, seed: int = 0) -> tuple[Interactions, Interactions]:
    if inter.timestamp is not None:
        return temporal_split(inter, test_fraction)
    log.warning("The log has no timestamps: holding out a random %.0f%% per user.", 100 * test_fraction)
    return random_split(inter, test_fraction, seed=seed)


def train_and_bundle(inter: Interactions, *, model: str = "mf", params: dict[str, Any] | None = None,
                     out: str | Path = "models", test_fraction: float = 0.2, refit: bool = True,
                     seed: int = 0, index: bool = True, target_recall: float = 0.95) -> TrainReport:
    """Run the whole job (see module docstring) and return where the bundle went and what it scored."""
    start = time.perf_counter()
    params = dict(params or {})
    candidate = make_model(model, **params)
    candidate._validate_params()
    train, test = holdout(inter, test_fraction, seed)
    if "epochs" in candidate.get_params():
        fit_part, valid = holdout(train, test_fraction, seed)
        best = make_model(model, **params).fit(fit_part, valid).exported_.extra["best_epoch"]
        params["epochs"] = int(best)
        log.info("Early stopping chose %d epochs", best)
    evaluated = make_model(model, **params).fit(train)
    metrics = {model: evaluate(evaluated, test, EVAL_K)}
    if model != "popularity":
        metrics["popularity"] = evaluate(Popularity().fit(train), test, EVAL_K)
    final = make_model(model, **params).fit(inter) if refit else evaluated
    if index:
        final.build_index(target_recall=target_recall, seed=seed)
    path = artifacts.new_version_path(out, model)
    final.save(path, metrics=metrics[model], extra={
        "evaluation": {"protocol": "temporal holdout" if inter.timestamp is not None else "random holdout",
                       "test_fraction": test_fraction, "baselines": {k: v for k, v in metrics.items() if k != model},
                       "refit_on_all_data": refit},
        "data": {"interactions": inter.nnz, "users": inter.n_users, "items": inter.n_items}})
    artifacts.publish(out, path)
    return TrainReport(path, metrics, final.get_params(), time.perf_counter() - start)
