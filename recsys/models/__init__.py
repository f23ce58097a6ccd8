"""Models sharing one contract (`recsys.models.base.Recommender`), by name (`recsys.models.registry`).

Importing this package needs no torch: `MODEL_NAMES` lists the built-in models, and a model's module is imported
when it is first asked for (`make_model`, `model_class`, or an attribute such as `recsys.models.IALS`).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Recommender
from .registry import MODEL_NAMES, MODEL_REGISTRY, make_model, model_class, model_params

if TYPE_CHECKING:
    from .baselines import EASE, ItemKNN
    from .blend import Blend
    from .ials import IALS
    from .mf import MF
    from .popularity import Popularity
    from .sasrec import SASRec
    from .spectral import SpectralCF
    from .two_tower import TwoTower

_CLASSES = {"Blend": "blend", "IALS": "ials", "MF": "mf", "TwoTower": "two_tower", "EASE": "baselines", "ItemKNN": "baselines",
            "Popularity": "popularity", "SASRec": "sasrec", "SpectralCF": "spectral"}

__all__ = [
    "EASE",
    "IALS",
    "MF",
    "MODEL_NAMES",
    "MODEL_REGISTRY",
    "Blend",
    "ItemKNN",
    "Popularity",
    "Recommender",
    "SASRec",
    "SpectralCF",
    "TwoTower",
    "load",
    "make_model",
    "model_class",
    "model_params",
]


def load(path: str | Path) -> Recommender:
    """Load any model from a bundle directory (or a models root with a `current` pointer)."""
    return Recommender.load(path)


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return getattr(importlib.import_module(f".{_CLASSES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
