"""The one place that answers "top k for this user / item / history, with these filters" (numpy only).

Models, the evaluator, the CLI and the server all rank through `Engine`, so offline evaluation and online
serving rank the same way. Scores are inner products `user_vector . item_vector`; item-to-item and
user-to-user similarity use cosine (or dot, for models whose vectors carry no direction, e.g. Popularity).
The engine turns ids into indices, filters and exclusions into index sets, and histories into user vectors
(fold-in); `recsys.retrieval.Retriever` finds the top k, `recsys.catalogue.Catalogue` knows the items.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .bundle import ITEM_TOWER_WEIGHTS, SEQUENCE_PREFIX, Bundle, read_bundle
from .catalogue import Catalogue, Filters
from .data import IdMap
from .exceptions import DataValidationError
from .features import ItemTower
from .foldin import FoldIn
from .retrieval import AnnIndex, CellIndex, Retriever, combine_exclusions, load_index, normalise
from .sequence import SequenceEncoder

SIMILARITIES = ("cosine", "dot")


@dataclass(frozen=True, eq=False)
class Recommendation:
    """One user's answer (`Engine.recommend_user`): item ids best first, without padding, and their scores.

    fallback: True when the user is unknown and has no feedback, so the items are the most popular ones and
    the scores their user counts. Titles: `Engine.catalogue.titles(item_ids)`.
    """

    user: object | None
    item_ids: np.ndarray  # external ids (str), object dtype
    scores: np.ndarray    # float32, best first
    fallback: bool
    item_index: np.ndarray | None = None  # the items' indices in the engine, when it made the answer


class Engine:
    """Top-k retrieval by id with exclusions, allow/deny lists, attribute filters and fold-in of unseen users.

    item_vectors (n_items, d), user_vectors (n_users, d): exported by a model. seen: users x items CSR of
    the training interactions (excluded by default). similarity_dims: how many leading dimensions
    similar_items / similar_users compare (None: all; a model with a bias column leaves it out).
    foldin: how a history becomes a user vector (`recsys.foldin.FoldIn`, or its dict form; default 'mean').
    projection: (n_items, d), the rows the 'linear' fold-in sums (None for every other method).
    item_tower: a two-tower's feature embeddings (`recsys.features.ItemTower`), which place new items.
    sequence: a sequential model's encoder (`recsys.sequence.SequenceEncoder`), what the 'sequence' fold-in runs.
    indexes / index_stats / mode / batch_size: the `recsys.retrieval.Retriever`'s (`self.retriever`).

    >>> from recsys.data import IdMap
    >>> engine = Engine(np.eye(3, dtype=np.float32), np.array([[1, 0.5, 0]], np.float32), IdMap(["u"]),
    ...                 IdMap(["a", "b", "c"]))
    >>> engine.recommend(["u"], k=2)
    (array([['a', 'b']], dtype=object), array([[1. , 0.5]], dtype=float32))
    >>> engine.recommend_for_history(["a"], k=1, exclude_history=False)[0]
    array(['a'], dtype=object)
    """

    def __init__(self, item_vectors: np.ndarray, user_vectors: np.ndarray, users: IdMap, items: IdMap,
                 seen: sp.csr_matrix | None = None, foldin: FoldIn | dict | None = None, similarity: str = "cosine",
                 item_metadata: pd.DataFrame | None = None, batch_size: int = 1024,
                 similarity_dims: int | None = None, indexes: dict[str, AnnIndex | CellIndex] | None = None,
                 index_stats: dict[str, dict] | None = None, mode: str = "auto",
                 projection: np.ndarray | None = None, item_tower: ItemTower | None = None,
                 sequence: SequenceEncoder | None = None):
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self.user_vectors = np.ascontiguousarray(user_vectors, dtype=np.float32)
        self.users, self.items = users, items
        if self.item_vectors.shape != (len(items), self.user_vectors.shape[1]) or \
                len(self.user_vectors) != len(users):
            raise DataValidationError(
                f"Vector shapes do not match the id maps: items {self.item_vectors.shape} for {len(items)} ids, "
                f"users {self.user_vectors.shape} for {len(users)} ids.")
        self.seen = seen if seen is not None else sp.csr_matrix((len(users), len(items)), dtype=np.float32)
        self.foldin = FoldIn.from_dict(foldin)
        self.projection = None if projection is None else np.ascontiguousarray(projection, dtype=np.float32)
        self.foldin.check(self.item_vectors, self.projection, sequence)
        self.item_tower, self.sequence = item_tower, sequence
        if similarity not in SIMILARITIES:
            raise DataValidationError(f"similarity must be one of {SIMILARITIES}. Got {similarity!r}.")
        self.similarity = similarity
        self.catalogue = Catalogue(items, item_metadata, self.seen)
        self._gram: dict[tuple, np.ndarray] = {}  # item_vectors.T @ item_vectors (by columns), for iALS fold-in
        dims = slice(0, similarity_dims)
        prep = normalise if similarity == "cosine" else np.ascontiguousarray
        self.similarity_vectors = prep(self.item_vectors[:, dims])  # what item-to-item similarity compares
        self._user_sim = prep(self.user_vectors[:, dims])
        self.retriever = Retriever(self.item_vectors, indexes, index_stats, mode, batch_size)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def prepare_serving(self) -> None:
        """Build now what every single-user answer reads (the retriever's int8 codes or column copy, and the
        popularity order) instead of on a first request: the service calls this when it loads a model, in
        gunicorn's master, so the forked workers share these arrays."""
        _ = self.catalogue.popular_order
        self.retriever.prepare()

    def calibrate(self, n_queries: int = 50, k: int = 10, seed: int = 0) -> dict[str, dict]:
        """Re-measure, here, what `mode='auto'` decides by: per index, ms per single-query answer through the
        index and by exact scoring, as requests ask them ('ip': a sampled training user, their seen items
        excluded; 'angular': a sampled item, itself excluded), `n_queries` of each. The bundle's figures were
        taken where and while it was built (another machine, other load, other threads); the service calls
        this once when it loads a model, before it serves. Returns the updated `index_stats`."""
        rng = np.random.default_rng(seed)
        stats_of = self.retriever.index_stats
        for metric in self.retriever.indexes:
            stats = stats_of.get(metric)
            if not stats:
                continue
            if metric == "ip":
                rows = rng.choice(len(self.users), min(n_queries, len(self.users)), replace=False)
                ask = functools.partial(self.recommend_indices, k=k)
            else:
                rows = rng.choice(self.n_items, min(n_queries, self.n_items), replace=False)
                ask = functools.partial(self.similar_item_indices, k=k)
            for key, mode in (("exact_ms", "exact"), ("ann_ms", "ann")):
                stats[key] = round(self.retriever.ms_per_query(ask, rows, mode), 4)
            stats["calibrated"] = True
        return stats_of

    def recommend_indices(self, user_index: np.ndarray, k: int = 10, exclude_seen: bool = True,
                          allow: np.ndarray | None = None, deny: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
        user_index = np.asarray(user_index, dtype=np.int64)
        if len(user_index) == 1:  # one user (every serving request): read the CSR row, no scipy indexing
            u = int(user_index[0])
            parts = [self.seen.indices[self.seen.indptr[u]:self.seen.indptr[u + 1]]] if exclude_seen else []
            if deny is not None:
                parts.append(deny[deny >= 0])
            exclude = None if not parts else [parts[0] if len(parts) == 1 else np.concatenate(parts)]
        else:
            exclude = combine_exclusions(self.seen[user_index] if exclude_seen else None, deny, len(user_index),
                                          self.n_items)
        return self.retriever.search(self.user_vectors[user_index], k, exclude=exclude, allow=allow)

    def fold_in(self, item_index: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """A user vector for a history of item indices (optional weights), from the item vectors alone: the
        model's own user solve, as its `recsys.foldin.FoldIn` config says (no retraining)."""
        return self.foldin.user_vector(self.item_vectors, item_index, weights, self._gramian, self.user_vectors,
                                       self.projection, self.sequence)

    def contributions(self, item_index: np.ndarray, weights: np.ndarray | None, targets: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """`fold_in`'s score of each of `targets` split over the history's distinct items
        (`recsys.foldin.FoldIn.contributions`): what `recsys.explain` reads."""
        return self.foldin.contributions(self.item_vectors, item_index, targets, weights, self._gramian,
                                         self.projection)

    def _gramian(self, columns: slice | None = None) -> np.ndarray:
        """item_vectors[:, columns].T @ item_vectors[:, columns], made on first use and kept (a blend's parts
        each ask for their own columns' block, never the whole blend's)."""
        key = (None, None) if columns is None else (columns.start, columns.stop)
        if key not in self._gram:
            vectors = self.item_vectors if columns is None else self.item_vectors[:, columns]
            self._gram[key] = vectors.T @ vectors
        return self._gram[key]

    def similar_item_indices(self, item_index: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        item_index = np.asarray(item_index, dtype=np.int64)
        return self.retriever.search(self.similarity_vectors[item_index], k,
                                     exclude=[np.array([i]) for i in item_index], candidates=self.similarity_vectors,
                                     metric="angular" if self.similarity == "cosine" else "dot")

    def similar_user_indices(self, user_index: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        user_index = np.asarray(user_index, dtype=np.int64)
        return self.retriever.search(self._user_sim[user_index], k, exclude=[np.array([u]) for u in user_index],
                                     candidates=self._user_sim, metric="users")

    # ---------------------------------------------------------------------------------- id-level API
    def recommend(self, user_ids: Iterable[object], k: int = 10, exclude_seen: bool = True,
                  items: Iterable[object] | None = None, exclude: Iterable[object] | None = None,
                  filters: Filters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), each (n_users, k), for known users.

        items: an allow-list of item ids; exclude: a deny-list; filters: item attributes, e.g.
        {"genres": ["Comedy", "Drama"]} (any of these) or ["category:shoes", "price<=100"]
        (`recsys.catalogue.Filter`), combined with each other and the lists by AND.
        """
        _check_k(k)
        user_index = self.users.to_index(user_ids, kind="user")
        allow = self.catalogue.allowed(items, filters)
        deny = None if exclude is None else self.items.to_index(exclude, missing="ignore")
        idx, val = self.recommend_indices(user_index, k, exclude_seen, allow=allow, deny=deny)
        return self.items.to_ids(idx), val

    def recommend_for_history(self, item_ids: Iterable[object], k: int = 10, exclude_history: bool = True,
                              weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of shape (k,) for an unseen user described by the items they interacted with."""
        _check_k(k)
        history = self.items.to_index(list(item_ids), missing="ignore")
        keep = history >= 0
        history = history[keep]
        w = None if weights is None else np.asarray(weights, np.float32)[keep]
        idx, val = self.history_indices(history, k, w, hide=history if exclude_history else None)
        return self.items.to_ids(idx), val

    def history_indices(self, history: np.ndarray, k: int, weights: np.ndarray | None = None,
                        hide: np.ndarray | None = None, allow: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (item indices, scores), shape (k,), for a user folded in from `history` (item indices);
        `hide` lists item indices to leave out (typically the history itself), `allow` restricts."""
        vector = self.fold_in(history, weights)
        hide = None if hide is None else [np.asarray(hide, dtype=np.int64)]  # (repeats are harmless)
        idx, val = self.retriever.search(vector[None, :], k, exclude=hide, allow=allow)
        return idx[0], val[0]

    def similar_items(self, item_ids: Iterable[object], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k)
        idx, val = self.similar_item_indices(self.items.to_index(item_ids, kind="item"), k)
        return self.items.to_ids(idx), val

    def similar_users(self, user_ids: Iterable[object], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k)
        idx, val = self.similar_user_indices(self.users.to_index(user_ids, kind="user"), k)
        return self.users.to_ids(idx), val

    def recommend_all(self, k: int = 10, exclude_seen: bool = True, batch_size: int = 4096) -> pd.DataFrame:
        """Top-k for every known user: a frame with columns user, item, rank, score (best first)."""
        return pd.concat(self.recommend_batches(k, exclude_seen, batch_size), ignore_index=True)

    def recommend_batches(self, k: int = 10, exclude_seen: bool = True, batch_size: int = 4096
                          ) -> Iterator[pd.DataFrame]:
        """`recommend_all` as one frame per `batch_size` users, in user order: memory bounded by a batch (the
        exact batched product: for many users at once it beats any index)."""
        _check_k(k)
        for start in range(0, len(self.users), batch_size):
            users = np.arange(start, min(start + batch_size, len(self.users)))
            idx, scores = self.recommend_indices(users, k, exclude_seen)
            valid = idx >= 0
            yield pd.DataFrame({
                "user": np.repeat(self.users.ids[users], k)[valid.ravel()].astype(str),
                "item": self.items.ids[idx[valid]].astype(str),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))[valid.ravel()],
                "score": scores[valid].astype(np.float32)})

    # ------------------------------------------------------------------------ one user's answer (serving)
    def recommend_user(self, user: object | None, k: int = 10, *, offset: int = 0, exclude: Iterable[object] = (),
                       filters: Filters | None = None, include_seen: bool = False,
                       history: Sequence[tuple[object, float]] | None = None) -> Recommendation:
        """Top-k items for one user, as the service and the CLI answer: known, folded in, or popular.

        user: a user the bundle knows is scored with their own vector; an unknown one without `history` gets
        the most popular items (``fallback`` is True); None is an anonymous session described by `history`
        alone. history: (item_id, weight) feedback events, oldest first (`FeedbackStore.history`): the user is
        folded in from what the bundle knows about them plus these (positive weights; unknown ids ignored).
        offset: skip this many of the best items (paging: items ``offset .. offset + k - 1``). exclude: item
        ids to leave out (unknown ids ignored); filters: item attributes, as `Catalogue.mask` takes them;
        include_seen: allow the items the user has seen. Fewer than k items only when fewer pass the filters.

        >>> from recsys.data import IdMap
        >>> engine = Engine(np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), np.array([[1.0, 0.2]]),
        ...                 IdMap(["ann"]), IdMap(["a", "b", "c"]))
        >>> rec = engine.recommend_user("ann", k=2)
        >>> rec.item_ids.tolist(), rec.fallback
        (['a', 'c'], False)
        >>> engine.recommend_user("ann", k=1, offset=1).item_ids.tolist()
        ['c']
        >>> engine.recommend_user("stranger", k=2).fallback  # unknown, no feedback: the most popular items
        True
        """
        return self.recommend_users([user], k, offset=offset, exclude=exclude, filters=filters,
                                    include_seen=include_seen, histories={user: history} if history else None)[0]

    def recommend_users(self, users: Sequence[object | None], k: int = 10, *, offset: int = 0,
                        exclude: Iterable[object] = (), filters: Filters | None = None,
                        include_seen: bool = False,
                        histories: Mapping[object, Sequence[tuple[object, float]]] | None = None
                        ) -> list[Recommendation]:
        """`recommend_user` for each of `users` (histories: each one's feedback events), one answer per user in
        order; the known users without feedback are ranked together in one batched search."""
        _check_k(k, offset)
        histories = histories or {}
        n, deny, allow = k + offset, self._deny(exclude), self.catalogue.allowed(None, filters)
        plain = [u for u in dict.fromkeys(users) if u is not None and not histories.get(u) and u in self.users]
        found: dict = {}
        if plain:
            idx, val = self.recommend_indices(self.users.to_index(plain, kind="user"), n,
                                              exclude_seen=not include_seen, allow=allow,
                                              deny=deny if len(deny) else None)
            found = {u: (i, v) for u, i, v in zip(plain, idx, val)}
        for u in dict.fromkeys(users):  # folded in: a user with feedback, or an anonymous history
            if u not in found and (histories.get(u) or u is None):
                found[u] = self._folded_in(u, histories.get(u) or (), n, deny, allow, include_seen)
        return [self._answer(u, found.get(u), n, offset, deny, allow) for u in users]

    def _deny(self, exclude: Iterable[object]) -> np.ndarray:
        deny = self.items.to_index(exclude, missing="ignore") if exclude else np.empty(0, np.int64)
        return deny[deny >= 0]

    def _answer(self, user: object | None, found: tuple[np.ndarray, np.ndarray] | None, n: int, offset: int,
                deny: np.ndarray, allow: np.ndarray | None) -> Recommendation:
        """The answer from the top-n `found` (None: the popular items, a fallback), paged by `offset`."""
        fallback = found is None
        idx, val = self.catalogue.popular(n, deny, allow) if fallback else found
        valid = idx >= 0
        idx, val = idx[valid][offset:], val[valid][offset:]
        return Recommendation(user, self.items.ids[idx], val, fallback, idx)

    def folded_history(self, user: object | None, history: Sequence[tuple[object, float]]
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, weights) of what `recommend_user` folds in for `user` with feedback `history`: a known
        user's training items (weight 1 each), then the events on items the bundle knows (those with a positive
        weight are folded in; the others are only hidden)."""
        items = self.items.to_index([i for i, _ in history], missing="ignore")
        weights = np.asarray([w for _, w in history], np.float32)[items >= 0]
        items = items[items >= 0]
        if user is not None and user in self.users:
            u = self.users.index(user, "user")
            known = self.seen.indices[self.seen.indptr[u]:self.seen.indptr[u + 1]]
            items = np.concatenate([known, items])
            weights = np.concatenate([np.ones(len(known), np.float32), weights])
        return items, weights

    def _folded_in(self, user: object | None, history: Sequence[tuple[object, float]], n: int, deny: np.ndarray,
                   allow: np.ndarray | None, include_seen: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-n for a user folded in from `folded_history`; None for an anonymous history without a known item
        (the caller falls back to popularity)."""
        items, weights = self.folded_history(user, history)
        if user is None and not len(items):
            return None
        positive = weights > 0
        hide = deny if include_seen else np.concatenate([deny, items])
        return self.history_indices(items[positive], n, weights[positive], hide=hide, allow=allow)

    def popular_items(self, k: int = 10, *, exclude: Iterable[object] = (),
                      filters: Filters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), shape (at most k,), of the items most users interacted with in the bundle, best
        first (ties by index); scores are those user counts. exclude / filters as in `recommend_user`."""
        _check_k(k)
        deny = self.items.to_index(exclude, missing="ignore")
        idx, counts = self.catalogue.popular(k, deny[deny >= 0], self.catalogue.allowed(None, filters))
        return self.items.ids[idx], counts


def _check_k(k: int, offset: int = 0) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataValidationError(f"The 'k' parameter must be an int >= 1. Got {k!r}.")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise DataValidationError(f"The 'offset' parameter must be an int >= 0. Got {offset!r}.")


def load_engine(path: str | Path, mode: str = "auto") -> tuple[Engine, Bundle]:
    """Load and verify a bundle into an Engine (numpy + annoy only: no torch, no model classes).

    The server and the CLI answer queries through this; `recsys.models.load` builds on it.
    """
    bundle = read_bundle(path)
    m = bundle.manifest
    engine = Engine(bundle.arrays["item_vectors"], bundle.arrays["user_vectors"], bundle.users, bundle.items,
                    seen=bundle.seen(), foldin=m.foldin, similarity=m.similarity,
                    item_metadata=bundle.item_metadata, similarity_dims=m.similarity_dims, mode=mode,
                    projection=bundle.arrays.get("foldin_projection"),
                    item_tower=None if m.item_tower is None else
                    ItemTower.from_state(m.item_tower, bundle.arrays[ITEM_TOWER_WEIGHTS]),
                    sequence=None if m.sequence is None else
                    SequenceEncoder.from_state(m.sequence, bundle.arrays, SEQUENCE_PREFIX))
    for metric, info in m.index.items():
        engine.retriever.indexes[metric] = load_index(bundle.path, info["prefix"], **info["config"])
        engine.retriever.index_stats[metric] = info["stats"]
    return engine, bundle
