"""Items added to a served model without retraining.

A new item gets a vector by the model's own rule, from what arrives with it:

- interactions from users the model knows: the model's fold-in with the roles of users and items swapped (for
  iALS and MF, the 'ridge' fold-in: the item solve of alternating least squares, which mirrors the user solve,
  every other user a zero target with weight at least `ITEM_UNOBSERVED`;
  for 'mean' fold-ins such as the two-tower's, the mean of its users' vectors). Models whose user vectors are not
  a small dense factor space (item-item and spectral models, blends) give the item the weighted mean of the
  vectors of the items its users interacted with (its co-consumed neighbours);
- attributes only (a name, a description, a category, a price): a two-tower's own item tower, which learned an
  embedding for each feature token and places the item as it placed training items without interactions
  (`recsys.features.ItemTower`: rule 'item tower'); for every other model its content vector
  (`recsys.content.content_vectors` over the catalogue's text columns) carried into the learned space by a ridge
  map fitted on the model's items (`recsys.content.map_to_learned`: rule 'content').

`add_items` returns an Engine that answers with the new items at once (by exact scoring: the bundle's index does
not hold them). The service stores added items in its feedback database (`submit`), so every worker and instance
computes the same vectors (`server.state`); `save_with_items` writes them into a new bundle version.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .bundle import CURRENT, csr_arrays, new_version_path, publish, resolve, write_bundle
from .catalogue import Catalogue
from .data import IdMap, is_missing
from .engine import Engine, load_engine
from .exceptions import DataValidationError
from .feedback import Event, FeedbackStore

log = logging.getLogger("recsys")

SOLVE_MAX_DIMS = 1024  # a fold-in over user vectors wider than this (a dense EASE's) uses the neighbours' rule
CONTENT_DIMS = 64
# The item solve weighs every other user as a zero target at least this much (iALS's default): without it, a
# model whose user vectors carry a constant column (MF's item bias) would fit a few buyers by that bias alone
# and score the item high for everyone.
ITEM_UNOBSERVED = 0.1


@dataclass(frozen=True)
class NewItem:
    """An item to add: its id, its attributes (columns of the catalogue, e.g. name, category, price) and
    interactions as (user id, weight) pairs."""

    id: str
    attributes: Mapping[str, object] = field(default_factory=dict)
    interactions: Sequence[tuple[str, float]] = ()


def item_vectors(engine: Engine, new: Sequence[NewItem]) -> tuple[np.ndarray, list[str]]:
    """(vectors (len(new), d) float32, the rule each one got: 'fold-in', 'neighbours', 'item tower' or 'content').
    An item without interactions from known users nor attributes to place it by cannot be placed:
    DataValidationError."""
    out = np.zeros((len(new), engine.item_vectors.shape[1]), np.float32)
    rules: list[str] = []
    gramian = functools.cache(lambda: engine.user_vectors.T @ engine.user_vectors)  # the item solve's, made once
    solve = engine.foldin
    if solve.method == "ridge" and solve.unobserved_weight < ITEM_UNOBSERVED:
        solve = dataclasses.replace(solve, unobserved_weight=ITEM_UNOBSERVED)
    for row, item in enumerate(new):
        users = engine.users.to_index([u for u, _ in item.interactions], missing="ignore")
        weights = np.asarray([w for _, w in item.interactions], np.float32)
        known = (users >= 0) & (weights > 0)
        if not known.any():
            rules.append("content")
        elif engine.foldin.method in ("ridge", "mean") and engine.user_vectors.shape[1] <= SOLVE_MAX_DIMS:
            out[row] = solve.user_vector(engine.user_vectors, users[known], weights[known], lambda *_: gramian())
            rules.append("fold-in")
        else:
            out[row] = neighbours_vector(engine, users[known], weights[known])
            rules.append("neighbours")
    by_content = [row for row, rule in enumerate(rules) if rule == "content"]
    if by_content and engine.item_tower is not None:
        out[by_content] = tower_vector(engine, [new[r] for r in by_content])
        rules = ["item tower" if rule == "content" else rule for rule in rules]
    elif by_content:
        out[by_content] = content_vector(engine, [new[r] for r in by_content])
    return out, rules


def tower_vector(engine: Engine, new: Sequence[NewItem]) -> np.ndarray:
    """The new items' vectors from the two-tower's item tower (their attributes' token embeddings)."""
    columns = engine.item_tower.featurizer.columns
    bare = [item.id for item in new if all(_blank(item.attributes.get(c)) for c in columns)]
    if bare:
        raise DataValidationError(f"Item(s) {bare[:5]} have no interactions from users the model knows and none of "
                                  f"the attributes its item tower reads: send interactions, or attributes among "
                                  f"{columns}.")
    return engine.item_tower.vectors(pd.DataFrame([{"item": item.id, **item.attributes} for item in new]))


def neighbours_vector(engine: Engine, users: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The mean of the vectors of the items `users` interacted with in training, each user by its weight."""
    counts = np.asarray(engine.seen[users].multiply(weights[:, None]).sum(axis=0)).ravel()
    if counts.sum() <= 0:
        return engine.item_vectors.mean(axis=0)
    return (counts @ engine.item_vectors / counts.sum()).astype(np.float32)


def text_columns(catalogue: Catalogue) -> list[str]:
    """The catalogue's attribute columns that hold text or lists (what a content vector reads)."""
    columns, numeric = catalogue.attributes
    return [c for c in columns if c not in numeric]


def content_vector(engine: Engine, new: Sequence[NewItem]) -> np.ndarray:
    """The new items' content vectors over the catalogue's text columns, mapped into the learned space by a
    ridge fitted on the model's own items (scikit-learn: the service imports it only when it comes to this)."""
    from .content import content_vectors, map_to_learned

    columns = text_columns(engine.catalogue)
    given = [[c for c in columns if not _blank(item.attributes.get(c))] for item in new]
    bare = [item.id for item, cols in zip(new, given) if not cols]
    if bare:
        raise DataValidationError(
            f"Item(s) {bare[:5]} have no interactions from users the model knows and no text attributes: send "
            "interactions" + (f", or attributes among {columns}." if columns else
                              " (the model has no item metadata to place an item by its text)."))
    used = sorted({c for cols in given for c in cols})
    rows = pd.DataFrame([{c: item.attributes.get(c) for c in used} for item in new])
    frame = pd.concat([engine.catalogue.metadata[used], rows], ignore_index=True)
    frame = frame.apply(lambda col: col.map(lambda v: "" if _blank(v) else v))
    content = content_vectors(frame, columns=used, dim=CONTENT_DIMS)
    n = engine.n_items
    learned = np.vstack([engine.item_vectors, np.zeros((len(new), engine.item_vectors.shape[1]), np.float32)])
    return map_to_learned(content, learned, np.arange(len(frame)) < n)[n:]


def _new_ids(engine: Engine, new: Sequence[NewItem]) -> list[str]:
    """The new items' ids, checked: not in the model, each once, attributes among the catalogue's columns."""
    ids = [str(item.id) for item in new]
    known = [i for i in ids if i in engine.items]
    if known:
        raise DataValidationError(f"Item(s) {known[:5]} are already in the model: add only new ids.")
    if len(set(ids)) != len(ids):
        raise DataValidationError("Each new item id must appear once in one call.")
    columns = engine.catalogue.attributes[0]
    for item in new:
        unknown = sorted(set(item.attributes) - set(columns))
        if unknown:
            raise DataValidationError(f"Item {item.id!r}: unknown attribute(s) {unknown}; the model's items have "
                                      f"{columns or 'no attribute columns'}.")
    return ids


def _blank(value: object) -> bool:
    return is_missing(value) or (isinstance(value, str) and not value.strip())


def add_items(engine: Engine, new: Sequence[NewItem]) -> Engine:
    """A new Engine answering with `engine`'s items and the `new` ones (vectors by `item_vectors`, attributes in
    its catalogue), by exact scoring; ids the engine already has are an error."""
    ids = _new_ids(engine, new)
    vectors, rules = item_vectors(engine, new)
    log.info("Added %d item(s) without retraining: %s", len(new),
             {rule: rules.count(rule) for rule in sorted(set(rules))})
    metadata = engine.catalogue.metadata
    if metadata is not None:
        rows = pd.DataFrame([{"item": i, **item.attributes} for i, item in zip(ids, new)], columns=metadata.columns)
        metadata = pd.concat([metadata, rows], ignore_index=True)
    seen = sp.hstack([engine.seen, sp.csr_matrix((engine.seen.shape[0], len(new)), dtype=engine.seen.dtype)],
                     format="csr")
    projection = None if engine.projection is None else np.vstack(
        [engine.projection, np.zeros((len(new), engine.projection.shape[1]), np.float32)])
    return Engine(np.vstack([engine.item_vectors, vectors]), engine.user_vectors, engine.users,
                  IdMap([*engine.items.ids, *ids]), seen, engine.foldin, engine.similarity, metadata,
                  batch_size=engine.retriever.batch_size, similarity_dims=engine.similarity_vectors.shape[1],
                  mode=engine.retriever.mode, projection=projection, item_tower=engine.item_tower,
                  sequence=engine.sequence)


def submit(engine: Engine, store: FeedbackStore, new: Sequence[NewItem]) -> dict[str, str]:
    """Check that `engine` can place every one of `new` (`add_items`; an error stores nothing), then store their
    interactions as events and the items themselves, committed before returning: what `POST /v1/items` does.
    Returns each item's rule ('fold-in', 'neighbours', 'content')."""
    ids = _new_ids(engine, new)
    _, rules = item_vectors(engine, new)
    store.add(Event(str(u), i, float(w)) for i, item in zip(ids, new) for u, w in item.interactions)
    store.add_items((i, item.attributes) for i, item in zip(ids, new))
    return dict(zip(ids, rules))


def save_with_items(bundle: str | Path, new: Sequence[NewItem]) -> Path:
    """Write a new version of `bundle` (a bundle, or a models root whose `current` names one) holding the `new`
    items (`add_items`) beside its own, and publish it when `bundle` is a models root: `recsys add-items`. The
    bundle being served is never modified; the new one has no index (exact scoring) until the next training."""
    path = resolve(bundle)
    engine, old = load_engine(path)
    extended = add_items(engine, new)
    arrays = {**old.arrays, "item_vectors": extended.item_vectors, **csr_arrays(extended.seen)}
    if extended.projection is not None:
        arrays["foldin_projection"] = extended.projection
    manifest = dataclasses.replace(old.manifest, index={}, data={**old.manifest.data, "added_items": [
        *old.manifest.data.get("added_items", []), *(str(item.id) for item in new)]})
    is_root = (Path(bundle) / CURRENT).exists()
    root = Path(bundle) if is_root else path.parent
    out = write_bundle(new_version_path(root, f"{manifest.model_class}-added"), arrays=arrays, users=old.users,
                       items=extended.items, manifest=manifest, item_metadata=extended.catalogue.metadata)
    if is_root:
        publish(root, out)
    return out
