"""The contract every model shares (scikit-learn / implicit style).

`__init__` stores keyword arguments only; `fit(interactions)` validates them and returns `self`; learned
state ends in `_`. A fitted model exports plain arrays (item and user vectors, fold-in settings) and answers
`recommend`, `recommend_for_history`, `similar_items` and `similar_users` through `recsys.engine.Engine`:
the same ranking path the server and the evaluator use. `save` writes a bundle; `load` reads one.
"""
from __future__ import annotations

import inspect
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from ..bundle import ITEM_TOWER_WEIGHTS, SEQUENCE_PREFIX, Bundle, Manifest, csr_arrays, write_bundle
from ..data import Interactions, time_ordered_matrix
from ..engine import Engine, load_engine
from ..exceptions import BundleError, DataValidationError, NotFittedError
from ..features import ItemTower
from ..foldin import FoldIn
from ..params import Options, Range
from ..retrieval import INDEX_PREFIX, build_indexes
from ..sequence import SequenceEncoder
from .registry import MODEL_REGISTRY, model_class


# ---------------------------------------------------------------------------------------- exported state
@dataclass
class Exported:
    """What serving needs from a trained model: plain arrays plus a little config."""

    item_vectors: np.ndarray
    user_vectors: np.ndarray
    foldin: FoldIn = field(default_factory=FoldIn)  # how the engine folds an unseen user in
    similarity: str = "cosine"
    similarity_dims: int | None = None
    extra: dict = field(default_factory=dict)  # JSON-able training facts (best epoch, history, ...)
    projection: np.ndarray | None = None  # (n_items, d): what the 'linear' fold-in sums (spectral models)
    item_tower: ItemTower | None = None  # a two-tower's feature embeddings: new items' vectors from attributes
    sequence: SequenceEncoder | None = None  # a sequential model's encoder: what its 'sequence' fold-in runs


class Recommender:
    """Base class. Subclasses declare `_parameter_constraints` and implement `_fit(train, validation)`."""

    _parameter_constraints: ClassVar[dict[str, Any]] = {}
    name: ClassVar[str] = "base"
    # What `recsys.tuning` searches: the space (dimensions from `recsys.params`; None: the model is not tuned,
    # {}: nothing to search, one trial at the defaults); the parameters every trial sets unless the caller fixes
    # them; the points tried after the defaults, before the sampler's own (each the defaults with a few values
    # changed); and the parameters that cannot change a fit on a log whose weights are all equal (not searched
    # there); and the parameters that change nothing while another has one of some values, {parameter: (other,
    # values)} (a search fits such a point once, whatever the idle parameter's value)
    search_space: ClassVar[dict[str, Range | Options] | None] = None
    trial_defaults: ClassVar[dict[str, Any]] = {}
    start_points: ClassVar[tuple[dict[str, Any], ...]] = ()
    weight_parameters: ClassVar[tuple[str, ...]] = ()
    inactive_when: ClassVar[dict[str, tuple[str, tuple]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MODEL_REGISTRY[cls.name] = cls

    # -------------------------------------------------------------------------------- parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind == p.KEYWORD_ONLY
                or (p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD)]

    @classmethod
    def effective_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` without those that change nothing given the others (`inactive_when`): two points with equal
        effective parameters fit the same model."""
        return {name: value for name, value in params.items()
                if name not in cls.inactive_when or params.get(cls.inactive_when[name][0]) not in cls.inactive_when[name][1]}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's keyword arguments as set (`deep` is accepted for scikit-learn's `clone`; models hold
        no nested estimators)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Recommender:
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise DataValidationError(f"Invalid parameter {key!r} for {type(self).__name__}. "
                                          f"Valid parameters: {valid}.")
            setattr(self, key, value)
        return self

    def _validate_params(self) -> None:
        for name, constraint in self._parameter_constraints.items():
            value = getattr(self, name)
            if not constraint.check(value):
                raise DataValidationError(f"The {name!r} parameter of {type(self).__name__} must be "
                                          f"{constraint.describe()}. Got {value!r}.")

    def __repr__(self) -> str:
        """The parameters that differ from the defaults, as scikit-learn prints them: `IALS(factors=8)`."""
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()
                         if not (k in defaults and _same(v, defaults[k])))
        return f"{type(self).__name__}({args})"

    # ---------------------------------------------------------------------------------------- fit
    def fit(self, interactions: Interactions, validation: Interactions | None = None) -> Recommender:
        """Learn from `interactions`; `validation` (same id maps) enables early stopping where supported."""
        self._validate_params()
        if not isinstance(interactions, Interactions):
            raise DataValidationError(f"{type(self).__name__}.fit expects recsys.data.Interactions "
                                      f"(see recsys.data.read_interactions). Got {type(interactions).__name__}.")
        if interactions.nnz == 0:
            raise DataValidationError("Cannot fit on an empty set of interactions.")
        if validation is not None and (validation.items != interactions.items or
                                       validation.users != interactions.users):
            raise DataValidationError("validation must share the id maps of the training interactions: "
                                      "create both with one of the recsys.data split functions.")
        exported = self._fit(interactions, validation)
        self._set_state(exported, interactions.users, interactions.items, seen_matrix(exported, interactions),
                        interactions.item_metadata)
        return self

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        raise NotImplementedError

    def _set_state(self, exported: Exported, users, items, seen, item_metadata) -> None:
        self.exported_ = exported
        self.users_, self.items_ = users, items
        self.engine_ = Engine(exported.item_vectors, exported.user_vectors, users, items, seen=seen,
                              foldin=exported.foldin, similarity=exported.similarity, item_metadata=item_metadata,
                              similarity_dims=exported.similarity_dims, projection=exported.projection,
                              item_tower=exported.item_tower, sequence=exported.sequence)

    def _check_fitted(self) -> Engine:
        if not hasattr(self, "engine_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 "Interactions (or 'load' a bundle) before using it.")
        return self.engine_

    @property
    def item_vectors_(self) -> np.ndarray:
        return self._check_fitted().item_vectors

    @property
    def user_vectors_(self) -> np.ndarray:
        return self._check_fitted().user_vectors

    # ------------------------------------------------------------------------------------ queries
    def recommend(self, user_ids: object | Iterable[object], k: int = 10, exclude_seen: bool = True,
                  items: Iterable[object] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (item ids, scores) for one user id (1-D arrays) or a list of user ids (2-D arrays)."""
        engine = self._check_fitted()
        single = _is_scalar(user_ids)
        ids, scores = engine.recommend([user_ids] if single else list(user_ids), k, exclude_seen, items=items)
        return (ids[0], scores[0]) if single else (ids, scores)

    def recommend_for_history(self, item_ids: Iterable[object], k: int = 10, exclude_history: bool = True
                              ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for an unseen user given the items they interacted with (fold-in, no retraining)."""
        return self._check_fitted().recommend_for_history(item_ids, k, exclude_history)

    def similar_items(self, item_ids: object | Iterable[object], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        engine = self._check_fitted()
        single = _is_scalar(item_ids)
        ids, scores = engine.similar_items([item_ids] if single else list(item_ids), k)
        return (ids[0], scores[0]) if single else (ids, scores)

    def similar_users(self, user_ids: object | Iterable[object], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        engine = self._check_fitted()
        single = _is_scalar(user_ids)
        ids, scores = engine.similar_users([user_ids] if single else list(user_ids), k)
        return (ids[0], scores[0]) if single else (ids, scores)

    # -------------------------------------------------------------------------------- persistence
    def build_index(self, *, k: int = 10, target_recall: float = 0.95, n_queries: int = 200,
                    seed: int = 0) -> dict[str, dict]:
        """Build Annoy indexes tuned to `target_recall`@k against exact search; `save` stores them.

        Returns what tuning measured (recall, latency, speed-up over exact) per index.
        """
        engine = self._check_fitted()
        similarity = engine.similarity_vectors if engine.similarity == "cosine" else None
        indexes, stats = build_indexes(engine.item_vectors, engine.user_vectors, similarity, k=k,
                                       target_recall=target_recall, n_queries=n_queries, seed=seed)
        engine.retriever.indexes, engine.retriever.index_stats = indexes, stats
        return stats

    def save(self, path: str | Path, *, metrics: dict | None = None, **sections: Any) -> Path:
        """Write a bundle at `path` (a new directory), with its indexes when built, and return it.

        sections: more of the manifest's fields (`recsys.bundle.Manifest`: evaluation, data, tuning)."""
        engine = self._check_fitted()
        arrays = {"item_vectors": engine.item_vectors, "user_vectors": engine.user_vectors,
                  **csr_arrays(engine.seen)}
        if engine.projection is not None:
            arrays["foldin_projection"] = engine.projection
        if engine.item_tower is not None:
            arrays[ITEM_TOWER_WEIGHTS] = engine.item_tower.weights
        if engine.sequence is not None:
            arrays.update(engine.sequence.arrays(SEQUENCE_PREFIX))
        files = {}
        for metric, index in engine.retriever.indexes.items():
            files.update(index.file_writers(INDEX_PREFIX[metric]))
        manifest = Manifest(
            model_class=self.name, params=_jsonable(self.get_params()), factors=int(engine.item_vectors.shape[1]),
            foldin=engine.foldin, similarity=self.exported_.similarity,
            similarity_dims=self.exported_.similarity_dims, training=_jsonable(self.exported_.extra),
            metrics=metrics or {},
            index={metric: {"prefix": INDEX_PREFIX[metric], "config": index.config(),
                            "stats": engine.retriever.index_stats.get(metric, {})} for metric, index in engine.retriever.indexes.items()},
            index_measured=engine.retriever.index_stats,
            item_tower=None if engine.item_tower is None else _jsonable(engine.item_tower.state()),
            sequence=None if engine.sequence is None else engine.sequence.state(), **sections)
        return write_bundle(path, arrays=arrays, users=self.users_, items=self.items_, manifest=manifest,
                            item_metadata=engine.catalogue.metadata, files=files)

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """Load a bundle written by `save` (checksums verified). On the base class, picks the right model."""
        engine, bundle = load_engine(path)
        return model_from_bundle(engine, bundle, expected=None if cls is Recommender else cls)


def seen_matrix(exported: Exported, interactions: Interactions) -> sp.csr_matrix:
    """The users' seen items as the engine keeps them: by item index, or in time order for a model with a sequence
    encoder, which folds a known user's history in as it happened (ties by the splits' draw with seed 0)."""
    return interactions.matrix() if exported.sequence is None else time_ordered_matrix(interactions)


def model_from_bundle(engine: Engine, bundle: Bundle, expected: type[Recommender] | None = None
                      ) -> Recommender:
    manifest = bundle.manifest
    name = manifest.model_class
    try:
        model_cls = model_class(name)
    except DataValidationError as err:
        raise BundleError(f"Bundle {str(bundle.path)!r} holds an unknown model class {name!r}. {err}") from err
    if expected is not None and model_cls is not expected:
        raise BundleError(f"Bundle {str(bundle.path)!r} holds a {model_cls.__name__}, not a {expected.__name__}. "
                          "Use recsys.models.load(path) to load any model.")
    defaults = {p.name: p.default for p in inspect.signature(model_cls.__init__).parameters.values()}
    # JSON has no tuples: a parameter whose default is a tuple comes back as one (a Blend's components)
    params = {k: _as_tuples(v) if isinstance(defaults[k], tuple) else v
              for k, v in manifest.params.items() if k in model_cls._param_names()}
    model = model_cls(**params)
    model.exported_ = Exported(bundle.arrays["item_vectors"], bundle.arrays["user_vectors"],
                               foldin=manifest.foldin, similarity=manifest.similarity,
                               similarity_dims=manifest.similarity_dims, extra=manifest.training,
                               projection=bundle.arrays.get("foldin_projection"), item_tower=engine.item_tower,
                               sequence=engine.sequence)
    model.users_, model.items_, model.engine_ = bundle.users, bundle.items, engine
    model.manifest_ = manifest
    return model


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def _same(a: object, b: object) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):  # arrays and the like
        return a is b


def _is_scalar(value: object) -> bool:
    return isinstance(value, (str, bytes, numbers.Number)) or np.ndim(value) == 0


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
