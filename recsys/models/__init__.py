"""Models sharing one contract (`recsys.models.base.Recommender`)."""
from __future__ import annotations

from pathlib import Path

from .base import MODEL_REGISTRY, Recommender
from .baselines import EASE, ItemKNN
from .ials import IALS
from .mf import MF
from .popularity import Popularity
from .two_tower import TwoTower

__all__ = ["EASE", "IALS", "MF", "MODEL_REGISTRY", "ItemKNN", "Popularity", "Recommender", "TwoTower", "load"]


def load(path: str | Path) -> Recommender:
    """Load any model from a bundle directory (or a models root with a `current` pointer)."""
    return Recommender.load(path)
