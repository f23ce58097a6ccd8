"""recsys: learn user and item embeddings from interaction logs, retrieve, serve, evaluate.

The front door: everything a notebook needs, imported on first use (PEP 562), so `import recsys` is quick and
torch is imported only when a torch model is used.

>>> import recsys
>>> inter = recsys.make_synthetic(n_users=60, n_items=40, seed=0).interactions
>>> log = recsys.read_interactions(inter, user_col="user", item_col="item", time_col="timestamp")
>>> train, test = recsys.temporal_split(log, 0.2)
>>> model = recsys.Popularity().fit(train)
>>> round(recsys.evaluate(model, test)["ndcg@10"], 3) >= 0
True

Layers (each module's docstring says more): `data` (read, map ids, split) -> `models` (fit, export arrays) ->
`bundle` (write, verify, load) -> `index` and `engine` (the one ranking path) -> `server/`, `cli`, notebooks.
`evaluation` scores any model through the engine; `tuning` searches hyper-parameters; `pipeline` is
`recsys train`.
"""
from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

logging.getLogger("recsys").addHandler(logging.NullHandler())

# public name -> the module that defines it (imported on first access)
_EXPORTS: dict[str, str] = {
    # reading and splitting logs
    "Interactions": "data", "IdMap": "data", "read_interactions": "data", "read_table": "data", "from_arrays": "data",
    "temporal_split": "data", "random_split": "data", "time_split": "data", "holdout": "data",
    "leave_last_out": "data",
    "load_movielens": "datasets", "make_synthetic": "datasets",
    # models (torch is imported with IALS, MF, TwoTower and SASRec)
    "IALS": "models", "MF": "models", "TwoTower": "models", "SASRec": "models", "EASE": "models", "ItemKNN": "models",
    "Popularity": "models", "SpectralCF": "models", "Blend": "models", "MODEL_NAMES": "models",
    "make_model": "models", "load": "models",
    # evaluating and tuning
    "evaluate": "evaluation", "compare": "evaluation", "evaluate_per_user": "evaluation",
    "ratio_interval": "evaluation", "ranking_metrics": "metrics", "per_user_metrics": "metrics",
    "tune": "tuning", "tune_auto": "tuning",
    # answering: the engine over a bundle, and training into one
    "Engine": "engine", "load_engine": "engine", "train_and_bundle": "pipeline",
    "FeedbackStore": "feedback",
    # notebooks: content vectors and cold start, the service in a child process
    "content_vectors": "content", "read_item_vectors": "content", "cold_item_split": "content",
    "LocalService": "service",
}

__all__ = [
    "EASE",
    "IALS",
    "MF",
    "MODEL_NAMES",
    "Blend",
    "Engine",
    "FeedbackStore",
    "IdMap",
    "Interactions",
    "ItemKNN",
    "LocalService",
    "Popularity",
    "SASRec",
    "SpectralCF",
    "TwoTower",
    "__version__",
    "cold_item_split",
    "compare",
    "content_vectors",
    "evaluate",
    "evaluate_per_user",
    "from_arrays",
    "holdout",
    "leave_last_out",
    "load",
    "load_engine",
    "load_movielens",
    "make_model",
    "make_synthetic",
    "per_user_metrics",
    "random_split",
    "ranking_metrics",
    "ratio_interval",
    "read_interactions",
    "read_item_vectors",
    "read_table",
    "temporal_split",
    "time_split",
    "train_and_bundle",
    "tune",
    "tune_auto",
]

if TYPE_CHECKING:
    from .content import cold_item_split, content_vectors, read_item_vectors
    from .data import (
        IdMap,
        Interactions,
        from_arrays,
        holdout,
        leave_last_out,
        random_split,
        read_interactions,
        read_table,
        temporal_split,
        time_split,
    )
    from .datasets import load_movielens, make_synthetic
    from .engine import Engine, load_engine
    from .evaluation import compare, evaluate, evaluate_per_user, ratio_interval
    from .feedback import FeedbackStore
    from .metrics import per_user_metrics, ranking_metrics
    from .models import (
        EASE,
        IALS,
        MF,
        MODEL_NAMES,
        Blend,
        ItemKNN,
        Popularity,
        SASRec,
        SpectralCF,
        TwoTower,
        load,
        make_model,
    )
    from .pipeline import train_and_bundle
    from .service import LocalService
    from .tuning import tune, tune_auto


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'recsys' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
