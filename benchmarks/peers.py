"""implicit's ALS and BPR wrapped in recsys's model contract, so they are tuned, fitted and evaluated by the very
same code as recsys's own models (recsys.tune, recsys.evaluate through the Engine): only training differs.

Imported by benchmarks/quality.py; importing registers the models as 'implicit_als' and 'implicit_bpr'.
"""
from __future__ import annotations

import os
from typing import ClassVar

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns (and slows down) otherwise

import numpy as np

from recsys.data import Interactions
from recsys.foldin import FoldIn
from recsys.models.base import BOOL, Exported, Interval, Recommender
from recsys.tuning import SEARCH_SPACES, Choice, Float, Int


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


SEARCH_SPACES["implicit_als"] = {"factors": Int(16, 512, log=True), "regularization": Float(1e-3, 1e3, log=True),
                                 "alpha": Float(0.05, 100.0, log=True), "iterations": Int(5, 50, log=True),
                                 "use_weights": Choice((False, True))}
SEARCH_SPACES["implicit_bpr"] = {"factors": Int(16, 512, log=True), "learning_rate": Float(1e-3, 0.3, log=True),
                                 "regularization": Float(1e-5, 1.0, log=True),
                                 "iterations": Int(10, 1000, log=True)}
