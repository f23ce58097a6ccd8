"""Model names and their classes. Torch-free: a model's module (and torch with it, for the embedding models) is
imported when the model is first asked for, so the CLI can list `MODEL_NAMES` at parse time."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..exceptions import DataValidationError

if TYPE_CHECKING:
    from .base import Recommender

MODEL_REGISTRY: dict[str, type[Recommender]] = {}  # filled as each Recommender subclass is defined
# built-in name -> module; other subclasses (e.g. a benchmark's peers) register themselves when defined
_MODULES = {"ials": "ials", "mf": "mf", "two_tower": "two_tower", "ease": "baselines", "itemknn": "baselines",
            "popularity": "popularity", "spectral": "spectral", "blend": "blend", "sasrec": "sasrec"}
MODEL_NAMES: tuple[str, ...] = tuple(_MODULES)


def model_class(name: str) -> type[Recommender]:
    """The model class registered as `name` (`recsys train --model NAME`), its module imported on first use."""
    if name not in MODEL_REGISTRY and name in _MODULES:
        importlib.import_module(f"{__package__}.{_MODULES[name]}")
    if name not in MODEL_REGISTRY or name == "base":
        known = sorted({*MODEL_NAMES, *MODEL_REGISTRY} - {"base"})
        raise DataValidationError(f"Unknown model {name!r}. Choose one of {known} (CLI: --model).")
    return MODEL_REGISTRY[name]


def make_model(name: str, **params: Any) -> Recommender:
    """A model by its registered name, with `params`.

    >>> make_model("ials", factors=8)
    IALS(factors=8)
    """
    return model_class(name)(**params)


def model_params(model: str, params: dict[str, Any] | None = None, **common: Any) -> dict[str, Any]:
    """`params` plus those of `common` (seed, progress, device, ...) that `model` accepts.

    >>> model_params("popularity", seed=0, progress=False)
    {}
    >>> model_params("ials", {"factors": 8}, seed=0, batch_size=None)
    {'seed': 0, 'factors': 8}
    """
    accepted = model_class(model)._param_names()
    return {**{k: v for k, v in common.items() if k in accepted and v is not None}, **(params or {})}
