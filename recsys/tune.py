"""Hyper-parameter search with Optuna, on a validation split carved from the training data.

`tune(train, "ials", budget=300)` holds out each user's latest `validation_fraction` of `train` (never the
test split: the caller keeps that), then runs Optuna's multivariate TPE sampler (it models correlated
parameters such as reg and reg_exponent jointly) over the model's search space until the time budget or trial
count is spent. The first trial is the model's defaults, so tuning never reports worse than
them. Models with early stopping (an `epochs` parameter) stop each trial on the validation split; the chosen
epoch count is part of the tuned parameters. A best value on the edge of a numeric range is reported in
`TuneResult.edges`: widen that range and tune again.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .data import Interactions
from .evaluate import evaluate
from .exceptions import DataValidationError, RecsysError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("recsys")


@dataclass(frozen=True)
class Range:
    """A numeric search dimension: int or float in [low, high], sampled on a log scale when `log`."""

    low: float
    high: float
    log: bool = False
    kind: type = float
    limits: tuple[str, ...] = ()  # edges that are the parameter's own limits ('low', 'high'): never widened

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.kind is int:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def at_edge(self, value: float, share: float = 0.05) -> str | None:
        """'low' / 'high' when `value` lies in the outer `share` of the range (on its own scale)."""
        scale = math.log if self.log else (lambda v: v)
        lo, hi = scale(self.low), scale(self.high)
        if hi == lo:
            return None
        pos = (scale(max(value, self.low)) - lo) / (hi - lo)
        side = "low" if pos <= share else "high" if pos >= 1 - share else None
        return None if side in self.limits else side


@dataclass(frozen=True)
class Choice:
    values: tuple

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))


def Int(low: int, high: int, log: bool = False, limits: tuple[str, ...] = ()) -> Range:
    return Range(low, high, log, int, limits)


def Float(low: float, high: float, log: bool = False, limits: tuple[str, ...] = ()) -> Range:
    return Range(low, high, log, float, limits)


# Per model: what the tuner searches. Ranges are wide on purpose (a new dataset is not MovieLens); the
# quality benchmark checks that no best value sits on an edge.
SEARCH_SPACES: dict[str, dict[str, Range | Choice]] = {
    "mf": {"factors": Int(16, 512, log=True), "reg": Float(1e-4, 1.0, log=True),
           "lr": Float(1e-3, 5e-2, log=True)},
    "ials": {"factors": Int(16, 512, log=True), "reg": Float(1e-4, 100.0, log=True),
             "unobserved_weight": Float(1e-3, 100.0, log=True),
             "reg_exponent": Float(0.0, 1.0, limits=("low", "high")),
             "confidence": Choice(("binary", "power")), "alpha": Float(0.1, 4.0, log=True)},
    "two_tower": {"factors": Int(16, 256, log=True), "lr": Float(3e-4, 3e-2, log=True),
                  "temperature": Float(0.02, 1.0, log=True), "id_dropout": Float(0.0, 0.8, limits=("low",)),
                  "logq": Float(0.3, 1.0, limits=("high",))},
    "ease": {"l2": Float(1.0, 1e5, log=True)},
    "itemknn": {"neighbours": Int(5, 2000, log=True), "shrink": Float(0.0, 200.0, limits=("low",))},
    "popularity": {},
}
EMBEDDING_MODELS = ("ials", "mf", "two_tower")
DEFAULT_BUDGET = 360.0  # seconds of search: with the final fits, `recsys train --tune` ends within 10 minutes


def default_budget(train: Interactions) -> float:
    """Seconds of search that `recsys train --tune` spends on `train` when no budget is given."""
    return DEFAULT_BUDGET


@dataclass
class TuneResult:
    model: str
    best_params: dict[str, Any]      # every parameter the search set, plus `epochs` chosen by early stopping
    best_value: float
    metric: str
    n_trials: int
    seconds: float
    validation_fraction: float
    trials: list[dict] = field(default_factory=list)
    edges: dict[str, str] = field(default_factory=dict)  # parameter -> 'low' / 'high' when best is at an edge

    def to_dict(self) -> dict:
        return asdict(self)


def _space(model: str, space: Mapping[str, Range | Choice] | None) -> Mapping[str, Range | Choice]:
    if space is not None:
        return space
    if model not in SEARCH_SPACES:
        raise DataValidationError(f"No search space for model {model!r}: pass space={{...}} "
                                  f"(known: {sorted(SEARCH_SPACES)}).")
    return SEARCH_SPACES[model]


def tune(train: Interactions, model: str, *, budget: float | None = 300.0, n_trials: int | None = None,
         space: Mapping[str, Range | Choice] | None = None, fixed: Mapping[str, Any] | None = None,
         validation_fraction: float = 0.2, metric: str = "ndcg@10", seed: int = 0) -> TuneResult:
    """Search `model`'s hyper-parameters on a validation split carved from `train`; see the module docstring.

    budget: seconds of search (a running trial finishes; None = no limit). n_trials: stop after this many.
    fixed: parameters set in every trial (e.g. progress=False, device='cpu').
    """
    import optuna

    from .models import MODEL_REGISTRY
    from .pipeline import holdout, make_model

    if budget is None and n_trials is None:
        raise DataValidationError("tune needs a time budget or a number of trials (budget=, n_trials=).")
    if budget is not None and budget <= 0:
        raise DataValidationError(f"The tuning budget must be > 0 seconds. Got {budget}.")
    defaults = make_model(model).get_params()  # (also names the model if unknown)
    fixed = dict(fixed or {})
    dims = {name: dim for name, dim in _space(model, space).items() if name not in fixed}  # fixed wins
    k = int(metric.split("@")[1]) if "@" in metric else 10
    fit_part, valid = holdout(train, validation_fraction, seed)
    if valid.nnz == 0:
        raise DataValidationError("The validation split is empty: too few interactions per user to tune on.")
    if not dims:  # nothing to search (e.g. popularity): one trial measures the model
        n_trials = 1
    early_stopping = "epochs" in MODEL_REGISTRY[model]._param_names()
    start = time.perf_counter()
    trials: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        params = {**fixed, **{name: dim.suggest(trial, name) for name, dim in dims.items()}}
        t0 = time.perf_counter()
        fitted = make_model(model, **params).fit(fit_part, valid if early_stopping else None)
        value = evaluate(fitted, valid, k)[metric]
        if early_stopping:
            trial.set_user_attr("epochs", int(fitted.exported_.extra["best_epoch"]))
        seconds = time.perf_counter() - t0
        trials.append({"number": trial.number, "value": value, "seconds": round(seconds, 2),
                       **{n: trial.params[n] for n in dims}, **trial.user_attrs})
        log.info("tune %s trial %d: %s=%.4f in %.1f s %s", model, trial.number, metric, value, seconds,
                 trial.params)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    first = {n: defaults[n] for n in dims if n in defaults and _inside(dims[n], defaults[n])}
    if first:
        study.enqueue_trial(first)
    study.optimize(objective, n_trials=n_trials, timeout=budget, catch=(RecsysError,))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise DataValidationError(f"No {model} trial finished: raise the budget (each trial fits one model).")
    best = study.best_trial
    best_params = {**fixed, **best.params, **best.user_attrs}
    edges = {n: side for n, dim in dims.items() if isinstance(dim, Range)
             for side in [dim.at_edge(best.params[n])] if side}
    for name, side in edges.items():
        log.warning("tune %s: the best %s=%r is at the %s edge of its range %s: widen it and tune again.",
                    model, name, best.params[name], side, dims[name])
    return TuneResult(model, best_params, float(best.value), metric, len(done), time.perf_counter() - start,
                      validation_fraction, trials, edges)


def widen(space: Mapping[str, Range | Choice], edges: Mapping[str, str], factor: float = 10.0
          ) -> dict[str, Range | Choice]:
    """`space` with each range in `edges` pushed out on that side: x/÷factor on log ranges, by the range's
    width on linear ones (a `limits` edge never moves; an int range stays >= 1 on a log scale)."""
    out = dict(space)
    for name, side in edges.items():
        dim = space[name]
        if not isinstance(dim, Range) or side in dim.limits:
            continue
        width = dim.high - dim.low
        if side == "low":
            low = dim.low / factor if dim.log else dim.low - width
            low = max(1, int(low)) if dim.kind is int else low
            out[name] = Range(low, dim.high, dim.log, dim.kind, dim.limits)
        else:
            high = dim.high * factor if dim.log else dim.high + width
            out[name] = Range(dim.low, int(high) if dim.kind is int else high, dim.log, dim.kind, dim.limits)
    return out


def _inside(dim: Range | Choice, value: Any) -> bool:
    if isinstance(dim, Choice):
        return value in dim.values
    return isinstance(value, (int, float)) and dim.low <= value <= dim.high
