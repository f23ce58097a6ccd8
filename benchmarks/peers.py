"""implicit's ALS and BPR wrapped in recsys's model contract, so they are tuned, fitted and evaluated by the very
same code as recsys's own models (recsys.tune, recsys.evaluate through the Engine): only training differs.

Imported by benchmarks/quality.py; importing registers the models as 'implicit_als' and 'implicit_bpr'.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns (and slows down) otherwise

import numpy as np

from recsys.data import Interactions
from recsys.foldin import FoldIn
from recsys.models.base import Exported, Recommender
from recsys.params import BOOL, Choice, Float, Int, Interval


def _user_items(train: Interactions, use_weights: bool):
    x = train.matrix(binary=not use_weights).astype(np.float32)
    return x.tocsr()


class ImplicitALS(Recommender):
    """implicit.cpu.als.AlternatingLeastSquares (Hu et al. 2008 with conjugate gradient), confidence
    1 + alpha * r, r = 1 per interaction or the rating when `use_weights`."""

    name: ClassVar[str] = "implicit_als"
    _parameter_constraints: ClassVar[dict] = {
        "factors": Interval(int, 1), "regularization": Interval(float, 0), "alpha": Interval(float, 0),
        "iterations": Interval(int, 1), "use_weights": BOOL, "seed": Interval(int, 0)}
    search_space: ClassVar[dict] = {
        "factors": Int(16, 512, log=True), "regularization": Float(1e-3, 1e3, log=True),
        "alpha": Float(0.05, 100.0, log=True), "iterations": Int(5, 50, log=True), "use_weights": Choice((False, True))}

    def __init__(self, *, factors: int = 100, regularization: float = 0.01, alpha: float = 1.0,
                 iterations: int = 15, use_weights: bool = False, seed: int = 0):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.use_weights = use_weights
        self.seed = seed

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization,
                                        alpha=self.alpha, iterations=self.iterations, random_state=self.seed,
                                        calculate_training_loss=False)
        model.fit(_user_items(train, self.use_weights), show_progress=False)
        return Exported(np.asarray(model.item_factors), np.asarray(model.user_factors),
                        foldin=FoldIn("ridge", reg=self.regularization, unobserved_weight=1.0))


class ImplicitBPR(Recommender):
    """implicit.cpu.bpr.BayesianPersonalizedRanking (its factors carry an item bias column)."""

    name: ClassVar[str] = "implicit_bpr"
    _parameter_constraints: ClassVar[dict] = {
        "factors": Interval(int, 1), "learning_rate": Interval(float, 0, closed_low=False),
        "regularization": Interval(float, 0), "iterations": Interval(int, 1), "seed": Interval(int, 0)}
    search_space: ClassVar[dict] = {
        "factors": Int(16, 512, log=True), "learning_rate": Float(1e-3, 0.3, log=True),
        "regularization": Float(1e-5, 1.0, log=True), "iterations": Int(10, 1000, log=True)}

    def __init__(self, *, factors: int = 100, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100, seed: int = 0):
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.seed = seed

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        model = BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                            regularization=self.regularization, iterations=self.iterations,
                                            random_state=self.seed)
        model.fit(_user_items(train, False), show_progress=False)
        return Exported(np.asarray(model.item_factors), np.asarray(model.user_factors),
                        foldin=FoldIn("ridge", reg=1.0))


# ------------------------------------------------------------------------------------- convergent grid search
# benchmarks/quality.py --real tunes its peers to convergence, not by time: a neighbourhood search on log grids.
#
#  * every numeric parameter lives on a log grid: value = start * step ** e (e a multiple of the current grid
#    spacing, 1 on the coarse grid), between a declared floor and ceiling;
#  * axis moves: evaluate the best's neighbours one step down and up each numeric axis (where the grid allows
#    it) and the best with each categorical parameter switched to each of its other values; move to the best
#    of them when it is strictly better, and repeat;
#  * when no axis move improves, evaluate the whole 3^d neighbourhood (every numeric axis one step down, same,
#    up: the diagonal moves too, as regularization and alpha trade off); move on if a point there is better,
#    else stop. The objective only grows along the way, so the final best is the best point tried and beats its
#    whole neighbourhood: on every axis both of its neighbours were tried and were not better, so it is
#    strictly interior on every axis, unless a neighbour lies past the axis's declared floor or ceiling ("at
#    ceiling"). Axis moves first cut the fits by about a third against 3^d neighbourhoods at every step (on
#    synthetic objectives, tests/test_quality_benchmark.py), with the same stopping guarantee;
#  * `refine` rounds then halve the spacing of the axes that allow it and search again from the best (the coarse
#    points lie on the finer grid, so nothing is fitted twice).
# A grid that is too narrow cannot stop the search: only a declared bound (factors 512) or `max_points` can.


@dataclass(frozen=True)
class Axis:
    """A numeric parameter on a log grid: start * step ** e, kept within [low, high] (the declared bounds)."""

    name: str
    start: float
    step: float
    low: float
    high: float
    integer: bool = False
    refine: bool = True   # halve the spacing in refinement rounds (False: powers of `step` only)

    def value(self, e: float) -> float | int:
        v = self.start * self.step ** e
        return round(v) if self.integer else float(v)

    def allows(self, e: float) -> bool:
        v = self.start * self.step ** e
        return self.low * (1 - 1e-9) <= v <= self.high * (1 + 1e-9)


@dataclass(frozen=True)
class Categorical:
    """A parameter with a few values, switched one at a time (a coordinate move); the first is the start."""

    name: str
    values: tuple[Any, ...]


Point = tuple[float, ...]   # the exponent e of each Axis, then the index of each Categorical's value


@dataclass
class SearchResult:
    best: Point
    best_params: dict[str, Any]
    best_value: float
    values: dict[Point, float]   # every point evaluated or given, by key
    fits: int                    # objective calls made by this search (points given up front are not counted)
    edges: dict[str, str]        # axis -> "ceiling" / "floor" where the best sits on a declared bound
    converged: bool              # the best beat its whole neighbourhood (False: max_points stopped the search)


@dataclass(frozen=True)
class Space:
    """What a grid search explores: numeric axes, categorical parameters, refinement rounds, a fit cap."""

    axes: tuple[Axis, ...]
    choices: tuple[Categorical, ...] = ()
    refine: int = 1
    max_points: int = 250

    def params(self, point: Point) -> dict[str, Any]:
        n = len(self.axes)
        out: dict[str, Any] = {a.name: a.value(e) for a, e in zip(self.axes, point[:n])}
        out.update({c.name: c.values[int(i)] for c, i in zip(self.choices, point[n:])})
        return out

    def describe(self) -> dict[str, Any]:
        return {"axes": [dataclasses.asdict(a) for a in self.axes],
                "choices": [{"name": c.name, "values": list(c.values)} for c in self.choices],
                "refine": self.refine, "max_points": self.max_points}

    def neighbourhood(self, best: Point, spacing: tuple[float, ...], full: bool = True) -> list[Point]:
        """`best`, its 3^d numeric neighbourhood within the bounds (`full`) or only its neighbours along each
        axis, then `best` with each categorical switched."""
        n = len(self.axes)
        steps = [[e + d * s for d in (0, -1, 1) if a.allows(e + d * s)]
                 for a, e, s in zip(self.axes, best[:n], spacing)]
        points = [(*p, *best[n:]) for p in itertools.product(*steps)
                  if full or sum(x != b for x, b in zip(p, best)) <= 1]
        for j, c in enumerate(self.choices):
            points += [(*best[:n + j], float(i), *best[n + j + 1:]) for i in range(len(c.values))
                       if i != best[n + j]]
        return points

    def edges(self, best: Point, spacing: tuple[float, ...]) -> dict[str, str]:
        out = {}
        for a, e, s in zip(self.axes, best, spacing):
            if not a.allows(e + s):
                out[a.name] = "ceiling"
            elif not a.allows(e - s):
                out[a.name] = "floor"
        return out


def grid_search(space: Space, objective: Callable[[dict[str, Any]], float], *,
                known: dict[Point, float] | None = None,
                on_point: Callable[[Point, dict[str, Any], float], None] | None = None) -> SearchResult:
    """Maximise `objective(params)` by the neighbourhood search described above. `known`: values already
    measured (a resumed search), reused without calling the objective; `on_point` is called after each call."""
    values: dict[Point, float] = dict(known or {})
    fits = 0
    best: Point = tuple(0.0 for _ in space.axes) + tuple(0.0 for _ in space.choices)
    spacing: tuple[float, ...] = ()
    for level in range(space.refine + 1):
        spacing = tuple(0.5 ** level if a.refine else 1.0 for a in space.axes)
        full = False
        while True:
            neighbours = space.neighbourhood(best, spacing, full)
            for point in neighbours:
                if point in values:
                    continue
                if len(values) >= space.max_points:
                    return _result(space, best, values, fits, spacing, converged=False)
                params = space.params(point)
                values[point] = float(objective(params))
                fits += 1
                if on_point is not None:
                    on_point(point, params, values[point])
            top = max(neighbours, key=lambda p: values[p])
            if values[top] > values[best]:
                best, full = top, False
            elif full:
                break
            else:
                full = True
    return _result(space, best, values, fits, spacing, converged=True)


def _result(space: Space, best: Point, values: dict[Point, float], fits: int, spacing: tuple[float, ...],
            converged: bool) -> SearchResult:
    return SearchResult(best, space.params(best), values.get(best, float("-inf")), values, fits,
                        space.edges(best, spacing), converged)


FACTORS_CEILING = 512


def als_space(weighted: bool, smoke: bool = False) -> Space:
    """implicit ALS's grid: factors x2 from 64 (at most 512, a declared ceiling), regularization and alpha x10^0.5
    from 0.1 and 1 (bounds far outside any useful value), use_weights where the log has non-constant weights."""
    choices = (Categorical("use_weights", (False, True)),) if weighted else ()
    if smoke:
        return Space((Axis("factors", 8, 2, 4, 8, integer=True, refine=False),
                      Axis("regularization", 0.1, 10.0, 0.01, 1.0), Axis("alpha", 1.0, 10.0, 0.1, 10.0)),
                     choices, refine=0, max_points=40)
    return Space((Axis("factors", 64, 2, 8, FACTORS_CEILING, integer=True, refine=False),
                  Axis("regularization", 0.1, 10 ** 0.5, 1e-5, 1e5), Axis("alpha", 1.0, 10 ** 0.5, 1e-4, 1e4)),
                 choices, refine=1, max_points=250)


def ease_space(smoke: bool = False) -> Space:
    """EASE's grid: l2 x10^0.5 from 100 (bounds 1e-3 .. 1e8), one refinement round at x10^0.25."""
    if smoke:
        return Space((Axis("l2", 10.0, 10.0, 0.1, 1e4),), refine=0, max_points=8)
    return Space((Axis("l2", 100.0, 10 ** 0.5, 1e-3, 1e8),), refine=1, max_points=40)
