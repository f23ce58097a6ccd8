"""Models sharing one contract (`recsys.models.base.Recommender`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..exceptions import DataValidationError
from .base import MODEL_REGISTRY, Recommender
from .baselines import EASE, ItemKNN
from .ials import IALS
from .mf import MF
from .popularity import Popularity
from .two_tower import TwoTower

__all__ = ["EASE", "IALS", "MF", "MODEL_REGISTRY", "ItemKNN", "Popularity", "Recommender", "TwoTower", "load",
           "make_model", "model_params"]


def make_model(name: str, **params: Any) -> Recommender:
    """A model by its registered name (`recsys train --model NAME`), with `params`."""
    if name not in MODEL_REGISTRY or name == "base":
        known = sorted(n for n in MODEL_REGISTRY if n != "base")
        raise DataValidationError(f"Unknown model {name!r}. Choose one of {known} (CLI: --model).")
    return MODEL_REGISTRY[name](**params)


def model_params(model: str, params: dict[str, Any] | None = None, **common: Any) -> dict[str, Any]:
    """`params` plus those of `common` (seed, progress, device, ...) that `model` accepts."""
    accepted = make_model(model)._param_names()
    return {**{k: v for k, v in common.items() if k in accepted and v is not None}, **(params or {})}


def load(path: str | Path) -> Recommender:
    """Load any model from a bundle directory (or a models root with a `current` pointer)."""
    return Recommender.load(path)
