"""Hyper-parameter search with Optuna, on a validation split carved from the training data.

`tune(train, "ials", budget=300)` holds out each user's latest `validation_fraction` of `train` (never the
test split: the caller keeps that) and runs a `Search`: Optuna's multivariate TPE sampler (it models
correlated parameters such as reg and reg_exponent jointly) over the model's search space. The first trial
is the model's defaults, so tuning never reports worse than them; the model's start points follow. From then
on every second trial is a neighbour of the best so far (one parameter moved one step, `neighbours`), the
first not yet tried: a local search beside the sampler's global one. Models with early stopping (an `epochs`
parameter) stop each trial on the validation split; the chosen epoch count is part of the tuned parameters.
Half-way through the budget, a numeric range whose best value sits on its edge is widened and the search
goes on with every trial so far (`run_widening`); what is still on an edge at the end is reported in
`TuneResult.edges`.

`tune_auto` is the search behind `recsys train [--tune]`: the closed-form models (popularity, the spectral
filter, EASE) searched for a fixed number of trials, then iALS, the other embedding models measured at their
defaults and searched further only while they can still win; `default_budget` scales the budget with
the size of the log. A model that refuses the data (its first trial fails) stops the search with its reason.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import Interactions
from .evaluation import evaluate
from .exceptions import DataValidationError, RecsysError
from .params import Choice, Range

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("recsys")


EMBEDDING_MODELS = ("ials", "mf", "two_tower")
# Closed-form models: fitted in seconds, with no epochs. `tune_auto` measures them on every log, by trial count.
CLOSED_FORM = ("popularity", "spectral", "ease")
AUTO_MODELS = (*CLOSED_FORM, *EMBEDDING_MODELS)  # what `recsys train --model auto` chooses among
CLOSED_FORM_TRIALS = {"spectral": (4, 24), "ease": (4, 10)}  # (without a budget, with one)
# With a budget, the closed-form searches go past their no-budget counts only within this share of it: on a wide
# catalogue one spectral trial costs 35-75 s (Ciao, 105k items), and 24 of them ran 2.5 x over a 720 s budget;
# on a 10k-row log they took 70% of a 94 s budget and left iALS, the better model there, eight trials.
CLOSED_FORM_SHARE = 1 / 3
CLOSED_FORM_MAX_FLOPS = 2e12  # EASE's inverse: ~1 minute per trial on 2 cores at this size
# Without a budget, each iterative model is measured at its defaults for at most PROBE_EPOCHS epochs and at
# most PROBE_WORK multiply-adds (`epoch_work` per epoch; early stopping may stop it sooner): a bound on work, not
# seconds, so the same log gives the same model on any load. 3e11 is about 75 s of MF's full softmax on 2 cores
# (4e9 multiply-adds/s measured on ml-latest-small); at 30k users x 40k items it leaves MF one epoch, iALS 17.
PROBE_EPOCHS = {"ials": 128, "mf": 60, "two_tower": 30}
PROBE_WORK = 3e11
# Without a budget, the first iterative model (iALS) runs its defaults and then as many of its start points, in
# order, as keep the sum of their work bounds (epochs x `epoch_work` at each point's factors) within this: five of
# six on ml-latest-small (0.1338 validation NDCG@10 at the 32-factor, weight-3 regime against 0.1121 at the
# defaults), four at 30k users x 40k items (about a minute more of iALS there)
LEAD_WORK = 5e11
# Then the best of those points once more with its factors multiplied by the largest power of two (up to the space's
# ceiling) whose work bound stays within this (`scale_up`): the cheap starts find the regime at 32 factors, and
# iALS keeps gaining with width once that regime is right (Rendle et al. 2022). On ml-latest-small 32 -> 128
# factors (validation NDCG@10 0.1338 -> 0.1389); on a 1M-row, 40k-item log a 32-factor best would go to 64,
# and the 128-factor default (its best, measured) is not widened.
SCALE_WORK = 2e11
# Then the sampler's own trials (and the neighbours of the best, `LOCAL_EVERY`) until their summed work, the
# epochs each trial ran (a pruned one stops early) x `epoch_work` at its point, passes CONTINUE_WORK, or
# CONTINUE_TRIALS have run (`continue_search`). Twelve such trials on the real logs moved validation NDCG@10 of
# iALS by 0-2 % (Diginetica 0.0443 -> 0.0452) for 20-30 s on ml-latest-small-sized logs; a count and a work
# bound keep the result the same on any load.
CONTINUE_TRIALS = 12
CONTINUE_WORK = 3e11
MIN_PROBE_EPOCHS = 3  # a model the work bound leaves fewer epochs is not measured without a budget (it could not
#                       learn enough to win, and one epoch of MF at 30k x 40k costs minutes)
# A trial's value is measured on at most this many validation users (a seeded sample, the same for every trial):
# full ranking of 30k users over 40k items costs 20 s per trial on 2 cores, and the sample's standard error is
# a few per cent of NDCG@10, while trials are compared on the same users
VALUE_USERS = 10_000
SELECT_GAP = 0.1  # models within 10% of the leader's validation score are scored again on a second split
# With a budget the search runs hundreds of trials and its best is the luckiest of them (the winner's curse):
# the leading model's best few trials are all scored on the confirmation split and the best mean of both scores
# wins (measured: on a 400-user log the best of ~700 iALS trials scored 2 % above the default point on validation
# and 2 % below it on the test). Their extra fits are bounded by CONFIRM_BUDGET_SHARE of the budget.
CONFIRM_TRIALS = 3
CONFIRM_BUDGET_SHARE = 0.1
BLEND_SHARES = (0.3, 0.5, 0.7)  # the leader's weight in the blends of the two best confirmed models
BLEND_TOLERANCE = 0.01  # a blend is chosen unless a single model's selection value beats it by more (`choose`)
# Popularity is chosen unless a personalised model's selection value beats it by more than this share: a model
# that only ties it has learnt nothing a count does not know, costs more and can fall below it on the test
# (measured: on a log driven by popularity alone, sixteen iALS trials tied it within 0.01 %)
POPULARITY_MARGIN = 0.01
BLEND_WORK = 3e11  # multiply-adds: without a budget, a blend whose four extra fits (two models, two splits) need more
BLEND_BUDGET_SHARE = 0.25  # with a budget, a blend whose fits would take longer than this share of it is skipped
# tune_auto and the pruner (see tune_auto's docstring)
LEAD_SHARE = 0.5          # of the budget, searched by the first model before any other is measured
PROBE_SHARE = 0.1         # of the budget, at most, for measuring another model at its defaults
CONTENDER_GAP = 0.03      # a model within 3% of the leader's validation score keeps searching
PRUNE_AFTER_TRIALS = 4    # complete trials before any is pruned
PRUNE_FROM_EPOCH = 4      # a trial's first epochs are never pruned (slow starters)
LOCAL_EVERY = 2           # after the start points, every LOCAL_EVERY-th trial is a neighbour of the best so far
LOCAL_STEP = 3.0          # a neighbour multiplies or divides one log-scale parameter by this (ints: its root)
LOCAL_LINEAR_STEP = 0.25  # ... or moves one linear parameter by this share of its range
MAX_BUDGET = 720.0        # seconds: default_budget's ceiling


def budget_for(n_interactions: int) -> float:
    """Seconds of search for a log of `n_interactions`: a minute, plus 1 s per 300 interactions (a trial's cost
    grows with the log, so this buys a similar number of trials), at most 12 minutes. 100k interactions: 393 s,
    so that `recsys train --tune` ends within 10 minutes; 1M: 720 s, within 20 minutes with the final fits."""
    return float(min(MAX_BUDGET, 60.0 + n_interactions / 300.0))


def default_budget(train: Interactions) -> float:
    """Seconds of search that `recsys train --tune` spends on `train` when no budget is given (`budget_for`)."""
    return budget_for(train.nnz)


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
    widened: dict[str, str] = field(default_factory=dict)  # parameter -> its range after widening
    n_pruned: int = 0  # trials stopped early: their curve fell below the median of earlier trials
    cut: list[dict] = field(default_factory=list)  # trials a time bound ended: {trial, seconds, epochs_run}
    confirmation: float | None = None  # the best parameters' score on a second, independent split (tune_auto)
    top: list[dict] = field(default_factory=list)  # the best CONFIRM_TRIALS trials: {params, value, seconds}
    confirmed: list[dict] = field(default_factory=list)  # those scored again by `confirm` (+ confirmation)
    members: list[dict] = field(default_factory=list)  # when not empty, the result is their average (`average`)

    @property
    def selection_value(self) -> float:
        """What `choose` ranks by: the mean of the search's best score and its confirmation, when confirmed."""
        return self.best_value if self.confirmation is None else (self.best_value + self.confirmation) / 2

    def estimator(self) -> tuple[str, dict[str, Any]]:
        """(model name, parameters) that `recsys train` fits for this result: its model at `best_params`, or the
        equal-weight blend of its `members`."""
        return ("blend", {"components": [list(c) for c in self.components()],
                          "weights": [round(1 / len(self.members), 6)] * len(self.members)}) \
            if self.members else (self.model, self.best_params)

    def components(self) -> list[tuple[str, dict[str, Any]]]:
        """(model, parameters) of each model this result fits: its members, or its best parameters."""
        return [(self.model, p) for p in (self.members or [self.best_params])]

    def to_dict(self) -> dict:
        return asdict(self)


def _inert(model: str, fit_part: Interactions) -> set[str]:
    """Parameters of the default space that cannot change a fit on this data (searching them only dilutes the
    sampler): how weights map to confidences, when every weight is the same."""
    from .models import model_class

    weight = fit_part.weight  # one row per (user, item) pair, as the model sees it
    inert = model_class(model).weight_parameters
    if inert and len(weight) and np.all(weight == weight[0]):
        log.info("tune %s: every weight is %g, so %s are not searched", model, weight[0], inert)
        return set(inert)
    return set()


def search_space(model: str) -> Mapping[str, Range | Choice]:
    """What the tuner searches for `model` (`Recommender.search_space`)."""
    from .models import model_class

    space = model_class(model).search_space
    if space is None:
        raise DataValidationError(f"No search space for model {model!r}: pass space={{...}}.")
    return space


class _Refused(Exception):
    """The model cannot be fitted on this data at all (its first trial failed): the search stops there."""


class Search:
    """One model's Optuna study on a fixed (fit_part, valid) split. `run` may be called again to continue the
    same study; `widen` pushes out the ranges whose best value sits on an edge, keeping every trial so far.

    trial_seconds (in `run`): a bound on each fit of a model with epochs (its `max_seconds`; the best epoch so
    far counts, and the epochs it reached become the tuned `epochs`).
    """

    def __init__(self, model: str, fit_part: Interactions, valid: Interactions, *,
                 space: Mapping[str, Range | Choice] | None = None, fixed: Mapping[str, Any] | None = None,
                 metric: str = "ndcg@10", seed: int = 0, validation_fraction: float = 0.2):
        import optuna

        from .models import make_model, model_class

        if valid.nnz == 0:
            raise DataValidationError("The validation split is empty: too few interactions per user to tune on.")
        self.model, self.fit_part, self.valid, self.metric, self.seed = model, fit_part, valid, metric, seed
        self.validation_fraction = validation_fraction
        self._defaults = make_model(model).get_params()  # (also names the model if unknown)
        self.fixed = {**model_class(model).trial_defaults, **(fixed or {})}
        inert = _inert(model, fit_part) if space is None else set()
        self.space = {name: dim for name, dim in (search_space(model) if space is None else space).items()
                      if name not in self.fixed and name not in inert}
        self.k = metric_k(metric)
        self.early_stopping = "epochs" in model_class(model)._param_names()
        self.trials: list[dict] = []
        self.n_pruned = 0
        self.seconds = 0.0
        self.cut: list[dict] = []  # trials whose fit a time bound (trial_seconds) ended before its epochs
        self.widened: dict[str, str] = {}
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = self._new_study()
        first = {n: self._defaults[n] for n in self.space
                 if n in self._defaults and _inside(self.space[n], self._defaults[n])}
        self.starts: list[dict[str, Any]] = []  # enqueued points: run whole, never pruned
        for start in ({}, *model_class(model).start_points) if first else ():
            point = {**first, **{n: v for n, v in start.items() if n in self.space and _inside(self.space[n], v)}}
            if point not in self.starts:
                self.starts.append(point)
                self.study.enqueue_trial(point)
        self.n_local = 0  # neighbour trials enqueued by `_refine`
        self._fitted: dict[tuple, tuple[float, dict]] = {}  # (value, user attrs) by effective parameters (`_key`)

    def _new_study(self) -> optuna.Study:
        import optuna

        sampler = optuna.samplers.TPESampler(seed=self.seed + len(self.widened), multivariate=True)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=PRUNE_FROM_EPOCH)
        return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)

    @property
    def done(self) -> list:
        import optuna

        return [t for t in self.study.trials if t.state == optuna.trial.TrialState.COMPLETE]

    @property
    def best_value(self) -> float:
        return float(self.study.best_value) if self.done else -math.inf

    def run(self, *, budget: float | None = None, n_trials: int | None = None,
            trial_seconds: float | None = None, max_fit_work: float | None = None) -> Search:
        """Add trials until `budget` seconds or `n_trials` trials (a running trial finishes). max_fit_work: a
        sampled point whose `fit_work` is over this is not fitted (the trial is pruned before it starts)."""
        import optuna

        from .models import make_model

        if not self.space:  # nothing to search (e.g. popularity): one trial measures the model
            if self.done:
                return self
            n_trials = 1
        bound = {"max_seconds": trial_seconds} if trial_seconds and self.early_stopping else {}

        def objective(trial: optuna.Trial) -> float:
            params = {**self.fixed, **{name: dim.suggest(trial, name) for name, dim in self.space.items()}}
            key = self._key(params)
            if key in self._fitted:  # the same model as a finished trial (an idle parameter moved): not refitted
                value, attrs = self._fitted[key]
                for name, attr in attrs.items():
                    trial.set_user_attr(name, attr)
                return value
            if max_fit_work is not None and fit_work(self.model, params, self.fit_part) > max_fit_work:
                log.info("tune %s: %s skipped: its fit would cost over %.3g multiply-adds", self.model,
                         trial.params, max_fit_work)
                raise optuna.TrialPruned()
            t0 = time.perf_counter()
            try:
                with self._pruning(trial):
                    fitted = make_model(self.model, **params, **bound).fit(
                        self.fit_part, self.valid if self.early_stopping else None)
            except RecsysError as err:
                if not self.done:  # the first trial (the defaults) failing means the model refuses this data
                    raise _Refused(str(err)) from err
                raise
            value = evaluate(fitted, self.valid, self.k, max_users=VALUE_USERS, seed=self.seed)[self.metric]
            if self.early_stopping:
                trial.set_user_attr("epochs", int(fitted.exported_.extra["best_epoch"]))
                if fitted.exported_.extra.get("cut_by_time"):
                    self.cut.append({"trial": len(self.trials), "seconds": trial_seconds,
                                     "epochs_run": int(fitted.exported_.extra["epochs_run"])})
            seconds = time.perf_counter() - t0
            self._fitted[key] = value, dict(trial.user_attrs)
            self.trials.append({"number": len(self.trials), "value": value, "seconds": round(seconds, 2),
                                **trial.params, **trial.user_attrs})
            log.info("tune %s trial %d: %s=%.4f in %.1f s %s", self.model, len(self.trials) - 1, self.metric,
                     value, seconds, trial.params)
            return value

        start = time.perf_counter()
        try:
            self.study.optimize(objective, n_trials=n_trials, timeout=budget, catch=(RecsysError,),
                                callbacks=[self._refine],
                                show_progress_bar=bool(self.fixed.get("progress", False)))
        except _Refused as err:  # optuna's catch lets it through only as a failed trial; stop instead
            raise DataValidationError(f"{self.model} cannot be tuned on this data: {err}") from err
        self.seconds += time.perf_counter() - start
        return self

    def _key(self, params: Mapping[str, Any]) -> tuple:
        from .models import model_class

        space_params = {n: v for n, v in params.items() if n in self.space}
        return tuple(sorted(model_class(self.model).effective_params(space_params).items()))

    def try_point(self, point: Mapping[str, Any]) -> Search:
        """Run one trial at `point` (parameters of the space), whole, like a start point; the points still
        waiting in the queue (start points not run, a neighbour) are dropped, so this one runs now."""
        self._restart()
        self.starts.append(dict(point))
        self.study.enqueue_trial(dict(point))
        return self.run(n_trials=1)

    def _refine(self, study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        """After the start points, make every `LOCAL_EVERY`-th trial a neighbour of the best so far (one
        parameter moved one step, `neighbours`), the first not yet tried: a local search beside the sampler's
        global one. Measured need: on a log where most of the space collapses to a popularity ranking, the
        sampler clustered on that plateau and never refined the start point one step from a better region."""
        import optuna

        trials = study.get_trials(deepcopy=False)  # read once (`study.trials` deep-copies every trial)
        states = {t.state for t in trials}
        if optuna.trial.TrialState.WAITING in states or len(trials) < len(self.starts) or \
                optuna.trial.TrialState.COMPLETE not in states:
            return
        if (len(trials) - len(self.starts)) % LOCAL_EVERY:
            return
        tried = {self._key(t.params) for t in trials}
        for point in neighbours(self.space, study.best_trial.params):
            if self._key(point) not in tried:  # (moving an idle parameter is no new point)
                study.enqueue_trial(point)
                self.n_local += 1
                return

    def _pruning(self, trial: optuna.Trial) -> contextlib.AbstractContextManager:
        """Report each validated epoch to Optuna; stop a trial whose curve falls below the median of earlier
        trials at the same epoch (Optuna's median pruner, see `PRUNE_AFTER_TRIALS` and `PRUNE_FROM_EPOCH`).
        The start points run whole (a strongly regularised one climbs slowly and would be cut while still
        rising), and so do models without early stopping."""
        if not self.early_stopping:
            return contextlib.nullcontext()
        import optuna

        from .models.loop import on_validation

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.params not in self.starts and trial.should_prune():
                log.info("tune %s trial %d pruned at epoch %d (%s %.4f)", self.model, trial.number, epoch,
                         self.metric, value)
                self.n_pruned += 1
                raise optuna.TrialPruned()
        return on_validation(report)

    def edges(self) -> dict[str, str]:
        if not self.done:
            return {}
        best = self.study.best_trial.params
        return {n: side for n, dim in self.space.items() if isinstance(dim, Range)
                for side in [dim.at_edge(best[n])] if side}

    def widen(self, factor: float = 10.0) -> dict[str, str]:
        """Widen the ranges whose best value is on an edge (see `widen`) and continue in a new study that holds
        every trial so far; returns {parameter: new range}, empty when nothing was on an edge."""
        edges = self.edges()
        space = widen(self.space, edges, factor)
        changed = {n: str(space[n]) for n in edges if space[n] != self.space[n]}
        if not changed:
            return {}
        log.info("tune %s: best on an edge %s, ranges widened to %s", self.model, edges, changed)
        self.space, self.widened = space, {**self.widened, **changed}
        self._restart()
        return changed

    def _restart(self) -> None:
        """A new study on the current space holding every finished trial (and none of the waiting ones)."""
        import optuna

        old = self.done
        self.study = self._new_study()
        dists = {n: _distribution(dim) for n, dim in self.space.items()}
        # each trial's curve comes along: the median pruner compares a new trial's epochs with these
        self.study.add_trials([optuna.trial.create_trial(params=t.params, distributions=dists, value=t.value,
                                                         user_attrs=t.user_attrs,
                                                         intermediate_values=t.intermediate_values) for t in old])

    def result(self) -> TuneResult:
        if not self.done:
            raise DataValidationError(f"No {self.model} trial finished: raise the budget (each trial fits one "
                                      "model).")
        best = self.study.best_trial
        edges = self.edges()
        for name, side in edges.items():
            log.warning("tune %s: the best %s=%r is at the %s edge of its range %s: widen it and tune again.",
                        self.model, name, best.params[name], side, self.space[name])
        return TuneResult(self.model, {**self.fixed, **best.params, **best.user_attrs}, float(best.value),
                          self.metric, len(self.done), self.seconds, self.validation_fraction, self.trials,
                          edges, self.widened, self.n_pruned, self.cut, top=self.top(CONFIRM_TRIALS))

    def top(self, n: int) -> list[dict]:
        """The `n` best finished trials, best first: {params (all the model is fitted with), value, seconds}."""
        ranked, keys = [], set()
        for t in sorted(self.done, key=lambda t: t.value, reverse=True):  # distinct models only
            key = self._key(t.params)
            if len(ranked) < n and key not in keys:
                keys.add(key)
                ranked.append(t)

        def seconds(t) -> float:  # (a restarted study's trials carry no times: the log of `run` has them)
            return next((r["seconds"] for r in self.trials if r["value"] == t.value
                         and all(r.get(k) == v for k, v in t.params.items())), 0.0)
        return [{"params": {**self.fixed, **t.params, **t.user_attrs}, "value": float(t.value),
                 "seconds": seconds(t)} for t in ranked]


def run_widening(search: Search, budget: float, rounds: int = 1) -> Search:
    """Spend `budget` seconds on `search`; after each of the first `rounds` equal parts, widen the ranges whose
    best value sits on an edge."""
    end = time.perf_counter() + budget
    for r in range(rounds, -1, -1):
        left = end - time.perf_counter()
        if left <= 0 and search.done:
            break
        search.run(budget=max(left / (r + 1), 1e-3))
        if r:
            search.widen()
    return search


def tune(train: Interactions, model: str, *, budget: float | None = 300.0, n_trials: int | None = None,
         space: Mapping[str, Range | Choice] | None = None, fixed: Mapping[str, Any] | None = None,
         validation_fraction: float = 0.2, metric: str = "ndcg@10", seed: int = 0,
         widen_rounds: int = 1) -> TuneResult:
    """Search `model`'s hyper-parameters on a validation split carved from `train`; see the module docstring.

    budget: seconds of search (a running trial finishes; None = no limit). n_trials: stop after this many.
    fixed: parameters set in every trial (e.g. progress=False, device='cpu'). widen_rounds: with a budget, how
    often a range whose best value is on an edge is widened (the budget is split in equal parts).
    """
    from .data import holdout

    if budget is None and n_trials is None:
        raise DataValidationError("tune needs a time budget or a number of trials (budget=, n_trials=).")
    _check_budget(budget)
    fit_part, valid = holdout(train, validation_fraction, seed)
    search = Search(model, fit_part, valid, space=space, fixed=fixed, metric=metric, seed=seed,
                    validation_fraction=validation_fraction)
    if budget is not None and n_trials is None:
        run_widening(search, budget, widen_rounds)
    else:
        search.run(budget=budget, n_trials=n_trials)
    return search.result()


def tune_auto(train: Interactions, *, budget: float | None, fixed: Callable[[str], Mapping[str, Any]] | None = None,
              models: tuple[str, ...] = AUTO_MODELS, validation_fraction: float = 0.2, metric: str = "ndcg@10",
              seed: int = 0, widen_rounds: int = 1) -> list[TuneResult]:
    """The search behind `recsys train [--tune]`: the closed-form models always, then the iterative ones.

    1. Each closed-form model (`CLOSED_FORM`: popularity, the spectral filter, EASE) is searched for a fixed
       number of trials (`closed_form_trials` without a budget), never for a time: their fits cost seconds,
       and a count keeps the result the same on a busy machine. With a budget they go on to its longer count
       while the closed-form searches together stay within `CLOSED_FORM_SHARE` of it. A model whose fit would
       cost more than `CLOSED_FORM_MAX_FLOPS` (EASE on a wide catalogue) is skipped, as is one that refuses
       the data.
    2. Without a budget, each iterative model is measured at its defaults, its fit bounded by work
       (`probe_bound`: epochs, never seconds, so the same log gives the same model on any load); the first
       (iALS) also at the start points that LEAD_WORK affords (`affordable_starts`), its best start widened
       (`scale_up`), and the sampler's trials that CONTINUE_WORK affords (`continue_search`).
    3. With a budget, the first iterative model (iALS) searches for `LEAD_SHARE` of the budget left; each
       other is measured at its defaults, each fit bounded by `PROBE_SHARE` of it.
    4. Then the iterative models within `CONTENDER_GAP` of the leader share the rest of it, the
       range widening of `run_widening` included.
    fixed(model): the parameters set in every trial of that model. Returns one result per model measured;
    the models close to the leader carry a `confirmation` on a second split, and `choose` picks among them
    (popularity included: nothing that scores below it is chosen).
    """
    from .data import holdout

    _check_budget(budget)
    start = time.perf_counter()
    fit_part, valid = holdout(train, validation_fraction, seed)
    fixed = fixed or (lambda name: {})

    def search(name: str, **extra: Any) -> Search:
        return Search(name, fit_part, valid, fixed={**fixed(name), **extra}, metric=metric, seed=seed,
                      validation_fraction=validation_fraction)

    searches: dict[str, Search] = {}
    for name in (m for m in models if m in CLOSED_FORM):
        reason = closed_form_refusal(name, fit_part)
        if reason:
            log.info("tune auto: %s skipped: %s", name, reason)
            continue
        try:
            s = search(name).run(n_trials=closed_form_trials(name, None))
            more = closed_form_trials(name, budget) - len(s.trials) if budget is not None else 0
            left = CLOSED_FORM_SHARE * (budget or 0.0) - (time.perf_counter() - start)
            searches[name] = s.run(n_trials=more, budget=left) if more > 0 and left > 0 else s
        except DataValidationError as err:
            log.warning("tune auto: %s skipped: %s", name, err)
            continue
        log.info("tune auto: %s: %s %.4f", name, metric, searches[name].best_value)
    iterative = [m for m in models if m not in CLOSED_FORM]
    lead_default = 0.0  # seconds of the first iterative model's default fit: other probes get at least as long
    for i, name in enumerate(iterative):
        left = None if budget is None else budget - (time.perf_counter() - start)
        try:
            if left is None:
                bound = probe_bound(name, fit_part, fixed(name))
                if bound is None:
                    log.info("tune auto: %s skipped: fewer than %d epochs fit in %.0e multiply-adds here "
                             "(recsys.tuning.PROBE_WORK); --tune or --model %s measures it", name,
                             MIN_PROBE_EPOCHS, PROBE_WORK, name)
                    continue
                s = search(name, **bound)
                s.run(n_trials=affordable_starts(s, fit_part, bound) if i == 0 else 1)
                wider = scale_up(s, fit_part, bound) if i == 0 else None
                if wider:
                    s.try_point(wider)
                if i == 0:
                    continue_search(s, fit_part)
            elif i == 0:
                s = search(name)
                run_widening(s, LEAD_SHARE * max(left, 1e-3), widen_rounds)
                lead_default = s.trials[0]["seconds"]
            else:
                cap = max(lead_default, min(PROBE_SHARE * budget, left / (len(iterative) - i + 1)))
                s = search(name).run(n_trials=1, trial_seconds=cap)
        except DataValidationError as err:
            log.warning("tune auto: %s skipped: %s", name, err)
            continue
        searches[name] = s
        log.info("tune auto: %s: %s %.4f (leader so far %.4f)", name, metric, s.best_value,
                 max(x.best_value for x in searches.values()))
    if not searches:
        raise DataValidationError(f"No model among {list(models)} could be fitted on this data.")
    if budget is not None:
        leader = max(s.best_value for s in searches.values())
        alive = [s for name, s in searches.items() if name not in CLOSED_FORM
                 and s.best_value >= (1 - CONTENDER_GAP) * leader]
        log.info("tune auto: %s share the rest of the budget", [s.model for s in alive])
        for i, s in enumerate(alive):
            left = budget - (time.perf_counter() - start)
            if left > 0:
                run_widening(s, left / (len(alive) - i), widen_rounds if s.model != iterative[0] else 0)
    if "spectral" in searches:
        from .models import spectral

        spectral.forget()
    results = [s.result() for s in searches.values()]
    confirm(results, train, fit_part, validation_fraction, metric, seed, budget)
    blended = blend_leaders(results, train, fit_part, valid, validation_fraction, fixed, metric, seed, budget)
    return results + ([blended] if blended else [])


def confirmation_split(train: Interactions, fit_part: Interactions, fraction: float, seed: int
                       ) -> tuple[Interactions, Interactions]:
    """A second split, independent of the validation split the search maximised: for a timed log, the latest
    `fraction` of the part before validation (the period before it); untimed, another seeded random holdout."""
    from .data import holdout

    return holdout(train, fraction, seed + 1) if train.timestamp is None else holdout(fit_part, fraction, seed)


def confirm(results: list[TuneResult], train: Interactions, fit_part: Interactions, fraction: float,
            metric: str = "ndcg@10", seed: int = 0, budget: float | None = None) -> None:
    """Score each model within `SELECT_GAP` of the leader again, at its best parameters, on
    `confirmation_split` (sets `TuneResult.confirmation`). A search keeps the luckiest of its trials, and the
    more trials the luckier (the winner's curse, strongest on small logs): `choose` ranks the confirmed models
    by the mean of both scores. After a budgeted search the leader's next best trials (`runners_up`) are scored
    too, and the one with the best mean of both scores becomes its best parameters (`TuneResult.confirmed`)."""
    from .models import make_model

    leader = max(results, key=lambda r: r.best_value)
    close = [r for r in results if r.best_value >= (1 - SELECT_GAP) * leader.best_value]
    extra = runners_up(leader, budget)
    if len(close) < 2 and not extra:
        return
    conf_fit, conf_valid = confirmation_split(train, fit_part, fraction, seed)
    if conf_valid.nnz == 0:
        return
    k = metric_k(metric)
    for r in close:
        scored, fitted = [], []
        for candidate in [{"params": r.best_params, "value": r.best_value}, *(extra if r is leader else [])]:
            try:
                fitted.append(make_model(r.model, **candidate["params"]).fit(conf_fit))
            except RecsysError as err:
                log.warning("tune auto: %s at %s not confirmed: %s", r.model, candidate["params"], err)
                continue
            value = float(evaluate(fitted[-1], conf_valid, k, max_users=VALUE_USERS, seed=seed)[metric])
            scored.append({**candidate, "confirmation": value})
            log.info("tune auto: %s confirmed on a second split: %s %.4f (search %.4f)", r.model, metric, value,
                     candidate["value"])
        if not scored:
            continue
        best = max(scored, key=lambda c: (c["value"] + c["confirmation"]) / 2)
        r.best_params, r.best_value, r.confirmation = best["params"], best["value"], best["confirmation"]
        r.confirmed = scored if len(scored) > 1 else []
        if len(scored) > 1 and r.model in EMBEDDING_MODELS:
            average(r, scored, fitted, conf_fit, conf_valid, k, seed)


def average(result: TuneResult, scored: list[dict], fitted: list, conf_fit: Interactions, conf_valid: Interactions,
            k: int, seed: int) -> None:
    """Make `result` the equal-weight blend of its confirmed trials (`scored`, fitted on `conf_fit` as `fitted`)
    unless its best one alone beats that by more than `BLEND_TOLERANCE` (by the mean of validation and
    confirmation; the blend's validation value is its members' mean, which understates it). A long search's best
    trials lie on a plateau where validation cannot tell them apart (on a 400-user log the 12 best were within
    0.001 of each other and uncorrelated with the test); their average has less variance than any one of them
    (docs/decisions/averaging-the-plateau.md). Only iterative models are averaged (`EMBEDDING_MODELS`: their
    trials differ in their random start and fit too); a closed-form model's neighbouring solutions are nearly one
    model (Book-Crossing: three EASE penalties averaged only tripled its cost, which then blocked its blend)."""
    from .models.blend import Blend

    blend = Blend.from_fitted(fitted, [1.0] * len(fitted), conf_fit, seed)
    confirmation = float(evaluate(blend, conf_valid, k, max_users=VALUE_USERS, seed=seed)[result.metric])
    value = float(np.mean([c["value"] for c in scored]))
    log.info("tune auto: the average of %s's %d best trials: %s %.4f (confirmed), against %.4f", result.model,
             len(scored), result.metric, confirmation, result.confirmation)
    if (value + confirmation) / 2 >= (1 - BLEND_TOLERANCE) * result.selection_value:
        result.members = [c["params"] for c in scored]
        result.best_value, result.confirmation = value, confirmation


def runners_up(result: TuneResult, budget: float | None) -> list[dict]:
    """The trials after `result`'s best (`TuneResult.top`) that `confirm` scores again: none without a budget
    (that search runs a dozen trials); with one, those whose fits, with the best's, take at most
    `CONFIRM_BUDGET_SHARE` of it (by their measured seconds)."""
    if budget is None or len(result.top) < 2:
        return []
    chosen, seconds = [], result.top[0]["seconds"]
    for trial in result.top[1:]:
        seconds += trial["seconds"]
        if seconds > CONFIRM_BUDGET_SHARE * budget:
            break
        chosen.append(trial)
    return chosen


def blend_leaders(results: list[TuneResult], train: Interactions, fit_part: Interactions, valid: Interactions,
                  fraction: float, fixed: Callable[[str], Mapping[str, Any]], metric: str = "ndcg@10",
                  seed: int = 0, budget: float | None = None) -> TuneResult | None:
    """The best confirmed model (`confirm`; popularity aside) blended with the next best one whose fits are
    affordable (`recsys.models.Blend`): the leader's weight among `BLEND_SHARES` chosen on the validation split,
    then confirmed on the second split like the others, so `choose` can compare it with them. Two close models
    of different families make different errors; which of them the test favours, a validation split often cannot
    tell, and their blend is usually at least as good as the better one. Affordable: the four extra fits
    (`blend_cost`) within `BLEND_WORK` multiply-adds without a budget (`fit_work`: the same decision on any
    load), within `BLEND_BUDGET_SHARE` of the budget by the best trials' measured seconds with one. None when
    no pair is confirmed and affordable."""
    from .models import make_model
    from .models.blend import Blend

    ranked = sorted((r for r in results if r.confirmation is not None and r.model != "popularity"),
                    key=lambda r: r.selection_value, reverse=True)
    if len(ranked) < 2:
        return None
    limit = BLEND_WORK if budget is None else BLEND_BUDGET_SHARE * budget
    parts = {r.model: [(m, {**fixed(m), **p}) for m, p in r.components()] for r in ranked}  # (an average: each member)
    costs = {r.model: sum(blend_cost(r, p, fit_part, budget) for _, p in parts[r.model]) for r in ranked}
    partner = next((r for r in ranked[1:] if costs[ranked[0].model] + costs[r.model] <= limit), None)
    lead = ranked[0]
    if partner is None and lead.members:  # an averaged leader's members cost too much: its best trial alone
        parts[lead.model] = [(lead.model, {**fixed(lead.model), **lead.best_params})]
        costs[lead.model] = blend_cost(lead, parts[lead.model][0][1], fit_part, budget)
        partner = next((r for r in ranked[1:] if costs[lead.model] + costs[r.model] <= limit), None)
    if partner is None:
        log.info("tune auto: no blend with %s: every partner's fits cost over %.3g (%s)", ranked[0].model, limit,
                 "recsys.tuning.BLEND_WORK multiply-adds" if budget is None else "seconds of the budget")
        return None
    pool = [ranked[0], partner]
    components = [c for r in pool for c in parts[r.model]]
    k = metric_k(metric)
    start = time.perf_counter()

    def weights(share: float) -> list[float]:  # the leader's share split evenly over its members, the rest likewise
        return [round(w / len(parts[r.model]), 6) for r, w in zip(pool, (share, 1 - share)) for _ in parts[r.model]]

    def value(models: list, share: float, fitted_on: Interactions, on: Interactions) -> float:
        blend = Blend.from_fitted(models, weights(share), fitted_on, seed)
        return float(evaluate(blend, on, k, max_users=VALUE_USERS, seed=seed)[metric])

    try:
        models = [make_model(m, **p).fit(fit_part) for m, p in components]
        values = {share: value(models, share, fit_part, valid) for share in BLEND_SHARES}
        share = max(values, key=values.get)
        conf_fit, conf_valid = confirmation_split(train, fit_part, fraction, seed)
        models = [make_model(m, **p).fit(conf_fit) for m, p in components]
        confirmation = value(models, share, conf_fit, conf_valid)
    except RecsysError as err:
        log.warning("tune auto: no blend of %s: %s", [r.model for r in pool], err)
        return None
    log.info("tune auto: blend of %s (weights %.1f / %.1f): %s %.4f, confirmed %.4f", [r.model for r in pool],
             share, 1 - share, metric, values[share], confirmation)
    return TuneResult("blend", {"components": [[m, p] for m, p in components], "weights": weights(share)},
                      values[share], metric, len(values), time.perf_counter() - start, fraction,
                      trials=[{"params": {"weights": weights(s)}, "value": v} for s, v in values.items()],
                      confirmation=confirmation)


def blend_cost(result: TuneResult, params: Mapping[str, Any], fit_part: Interactions, budget: float | None
               ) -> float:
    """What refitting `result`'s model twice (on the fit part and the confirmation split) costs a blend: without a
    budget its `fit_work`, with one the seconds of its best trial."""
    if budget is None:
        return 2 * fit_work(result.model, params, fit_part)
    return 2 * next((t.get("seconds", 0.0) for t in result.trials if t.get("value") == result.best_value),
                    result.seconds)


def fit_work(model: str, params: Mapping[str, Any], data: Interactions) -> float:
    """Multiply-adds of one fit of `model` with `params` on `data`, to the leading term: epochs x `epoch_work`
    for the iterative models, min(users, items)^3 for EASE's inverse, (users + items) x q^2 for the spectral
    filter's decomposition (q its vectors), 0 for popularity."""
    from .models import make_model

    p = {**make_model(model).get_params(), **params}
    if model in PROBE_EPOCHS:
        return p["epochs"] * epoch_work(model, p, data)
    if model == "ease":
        return float(min(data.n_users, data.n_items)) ** 3
    if model == "spectral":
        return float(data.n_users + data.n_items) * max(p["factors"], p["low_pass"]) ** 2
    return 0.0


def metric_k(metric: str) -> int:
    """The cut-off of a ranking metric's name: 10 for 'ndcg@10' (and for a name without one)."""
    return int(metric.split("@")[1]) if "@" in metric else 10


def choose(results: list[TuneResult]) -> TuneResult:
    """The model `recsys train` bundles: of the confirmed results (`confirm`), the best `selection_value`;
    with none confirmed, the best search score. A blend (`blend_leaders`) is preferred unless the best single
    model beats it by more than `BLEND_TOLERANCE`: on logs of a few thousand users the two scores' noise is
    larger than that, and a blend of two close models is the safer bet (it is rarely below the better of them).
    Popularity, when measured, is kept unless the choice beats it by more than `POPULARITY_MARGIN`."""
    pool = [r for r in results if r.confirmation is not None] or results
    best = max(pool, key=lambda r: r.selection_value)
    blends = [r for r in pool if r.model == "blend"]
    if blends and best.model != "blend" and blends[0].selection_value >= (1 - BLEND_TOLERANCE) * best.selection_value:
        best = blends[0]
    popular = next((r for r in pool if r.model == "popularity"), None)
    if popular is not None and best.selection_value <= (1 + POPULARITY_MARGIN) * popular.selection_value:
        return popular
    return best


def epoch_work(model: str, params: Mapping[str, Any], data: Interactions) -> float:
    """Multiply-adds of one epoch of `model` with `params` (defaults where unset) on `data`, to the leading
    term: iALS (nnz + users + items) k^2 (its CG sweeps), MF users x items x k (the full softmax), two-tower
    nnz x batch x k (in-batch softmax). 0 for a model without epochs."""
    from .models import make_model

    p = {**make_model(model).get_params(), **params}
    k = p.get("factors", 0)
    if model == "ials":
        return float(data.nnz + data.n_users + data.n_items) * k * k
    if model == "mf":
        return float(data.n_users) * data.n_items * k
    if model == "two_tower":  # x 2.5: its multiply-adds ran 2.5 x slower than MF's on ml-latest-small
        return 2.5 * float(data.nnz) * p["batch_size"] * k
    return 0.0


def probe_bound(model: str, data: Interactions, params: Mapping[str, Any]) -> dict[str, int] | None:
    """{'epochs': n} bounding a fit of `model` without a budget: PROBE_EPOCHS, lowered so that the fit's work
    (`epoch_work`) stays within PROBE_WORK; None when that leaves fewer than MIN_PROBE_EPOCHS (the model is not
    measured). {} for a model not in PROBE_EPOCHS (or that fixes its own epochs)."""
    if model not in PROBE_EPOCHS or "epochs" in params:
        return {}
    work = epoch_work(model, params, data)
    epochs = int(min(PROBE_EPOCHS[model], PROBE_WORK // work if work else math.inf))
    return {"epochs": epochs} if epochs >= MIN_PROBE_EPOCHS else None


def affordable_starts(search: Search, data: Interactions, bound: Mapping[str, int]) -> int:
    """How many of `search`'s enqueued points (its defaults, then its start points, in order) to run without a
    budget: the leading ones whose summed work, `bound`'s epochs x `epoch_work` at each point's parameters, stays
    within LEAD_WORK; at least the defaults."""
    epochs = bound.get("epochs", search.fixed.get("epochs", 1))
    total, n = 0.0, 0
    for point in search.starts:
        total += epochs * epoch_work(search.model, {**search.fixed, **point}, data)
        if n and total > LEAD_WORK:
            break
        n += 1
    return max(n, 1)


def scale_up(search: Search, data: Interactions, bound: Mapping[str, int]) -> dict[str, Any] | None:
    """The best trial's point of `search` with its factors multiplied by the largest power of two that keeps a fit's
    work bound (`bound`'s epochs x `epoch_work`) within SCALE_WORK and the factors within their range; None when
    the factors are not searched, or not even a doubling fits."""
    dim = search.space.get("factors")
    if not isinstance(dim, Range) or not search.done:
        return None
    best = dict(search.study.best_trial.params)
    epochs = bound.get("epochs", search.fixed.get("epochs", 1))
    wider = None
    factors = 2 * best["factors"]
    while factors <= dim.high and \
            epochs * epoch_work(search.model, {**search.fixed, **best, "factors": factors}, data) <= SCALE_WORK:
        wider = {**best, "factors": factors}
        factors *= 2
    return wider


def continue_search(search: Search, data: Interactions) -> Search:
    """Run `search`'s next trials (start points still queued, then the sampler's), one at a time, until
    CONTINUE_TRIALS have run or their summed work passes CONTINUE_WORK: each trial costs the epochs it validated
    (all of its bound when it did not validate any) x `epoch_work` at its point. A point whose fit could cost
    more than SCALE_WORK (the widest fit the default path affords) is not fitted: on a 1M-row log one
    512-factor fit would cost over ten minutes."""
    import optuna

    spent = 0.0
    for _ in range(CONTINUE_TRIALS):
        if spent > CONTINUE_WORK:
            break
        search.run(n_trials=1, max_fit_work=SCALE_WORK)
        finished = [t for t in search.study.get_trials(deepcopy=False) if t.state.is_finished()]
        trial = max(finished, key=lambda t: t.datetime_complete)  # (a start point may have waited in the queue)
        epochs = max(trial.intermediate_values, default=search.fixed.get("epochs", 1))  # epochs count from 1
        if trial.state != optuna.trial.TrialState.PRUNED or trial.intermediate_values:
            spent += epochs * epoch_work(search.model, {**search.fixed, **trial.params}, data)
    return search


def closed_form_trials(model: str, budget: float | None) -> int:
    """How many trials a closed-form model gets in `tune_auto`: its defaults alone for popularity (nothing to
    search), a short fixed search without a budget, a longer one with (still a count, never a time)."""
    if not search_space(model):
        return 1
    return CLOSED_FORM_TRIALS[model][0 if budget is None else 1]


def closed_form_refusal(model: str, fit_part: Interactions) -> str | None:
    """Why `tune_auto` does not measure `model` on this data, or None: a fit whose dominant cost (EASE: a
    dense inverse of the smaller side's Gram matrix, min(users, items)^3 flops) is over
    `CLOSED_FORM_MAX_FLOPS`."""
    if model != "ease":
        return None
    side = min(fit_part.n_users, fit_part.n_items)
    flops = float(side) ** 3
    if flops > CLOSED_FORM_MAX_FLOPS:
        return (f"a {side:,} x {side:,} inverse per trial (~{flops:.1e} flops) is over the "
                f"{CLOSED_FORM_MAX_FLOPS:.0e} of recsys.tuning.CLOSED_FORM_MAX_FLOPS")
    return None


def _check_budget(budget: float | None) -> None:
    if budget is not None and budget <= 0:
        raise DataValidationError(f"The tuning budget must be > 0 seconds. Got {budget}.")


def _distribution(dim: Range | Choice):
    import optuna

    if isinstance(dim, Choice):
        return optuna.distributions.CategoricalDistribution(list(dim.values))
    if dim.kind is int:
        return optuna.distributions.IntDistribution(int(dim.low), int(dim.high), log=dim.log)
    return optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)


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


def neighbours(space: Mapping[str, Range | Choice], point: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`point` with one parameter moved one step, for each parameter in turn and both ways: x/÷`LOCAL_STEP`
    on a log scale (an int by at least 1), ± `LOCAL_LINEAR_STEP` of the range on a linear one, every other
    value of a choice; clipped to the range, duplicates and no-ops left out."""
    out: list[dict[str, Any]] = []
    for name, dim in space.items():
        if name not in point:
            continue
        value = point[name]
        if isinstance(dim, Choice):
            moved = [v for v in dim.values if v != value]
        elif dim.log:
            step = math.sqrt(LOCAL_STEP) if dim.kind is int else LOCAL_STEP
            moved = [value * step, value / step]
        else:
            width = LOCAL_LINEAR_STEP * (dim.high - dim.low)
            moved = [value + width, value - width]
        for v in moved:
            if isinstance(dim, Range):
                if dim.kind is int:  # at least one step of 1, then inside the range
                    v = round(v) if round(v) != value else int(value + (1 if v > value else -1))
                v = min(max(v, dim.low), dim.high)
                v = int(v) if dim.kind is int else v
            candidate = {**point, name: v}
            if v != value and candidate not in out:
                out.append(candidate)
    return out


def _inside(dim: Range | Choice, value: Any) -> bool:
    if isinstance(dim, Choice):
        return value in dim.values
    return isinstance(value, (int, float)) and dim.low <= value <= dim.high
