"""Why an item was recommended: the history items that contributed most to its score.

A user's vector is a fold-in of their history (`recsys.foldin`), and every fold-in is linear in that history
once it is fixed, so a score splits exactly over the history's items (`FoldIn.contributions`: for iALS the
decomposition implicit's `explain` makes). Where the served vector is the model's own trained one and differs
from the fold-in of the same history (MF, two-tower), the reasons explain the fold-in, which ranks nearly alike:
`how` says which.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .engine import Engine

EXACT_TOL = 1e-3  # relative: a trained user vector this close to its fold-in is that fold-in (iALS: 1e-5)


def explain(engine: Engine, user: object | None, item_ids: Sequence[object], *,
            history: Sequence[tuple[object, float]] | None = None, top: int = 3) -> tuple[list[list[dict]], str]:
    """For each of `item_ids` (recommended to `user`, with their feedback `history` as `recommend_user` takes
    it), the `top` history items with the largest contributions to its score, each as {"item", "share"}
    (its contribution over the sum of all the history's contributions to that score). Also `how`: 'exact'
    (the served vector is the fold-in decomposed), 'fold-in' (the served vector is a trained one; the reasons
    decompose the fold-in of the same history), or 'none' (no history: a popularity fallback, a model
    without personalisation, or a sequential model, whose scores do not split over the history; every list is
    empty)."""
    index, weights, how = _history(engine, user, history or ())
    targets = engine.items.to_index(list(item_ids), kind="item")
    if not len(index) or engine.foldin.method in ("constant", "sequence"):
        return [[] for _ in targets], "none"
    distinct, contrib = engine.contributions(index, weights, targets)
    out = []
    for column in contrib.T:
        total = column.sum()
        order = [j for j in np.argsort(-column, kind="stable")[:top] if column[j] > 0]
        out.append([{"item": str(engine.items.ids[distinct[j]]),
                     "share": round(float(column[j] / total), 4) if total > 0 else None} for j in order])
    return out, how


def annotate(engine: Engine, user: object | None, items: list[dict],
             history: Sequence[tuple[object, float]] | None = None, top: int = 3) -> str:
    """Add `explain`'s reasons to each answer item ({"id", ...}, as `Catalogue.scored_items` lists them) as its
    "because" list; returns `how`. The one place the service and `recsys recommend --explain` do this."""
    reasons, how = explain(engine, user, [item["id"] for item in items], history=history, top=top)
    for item, because in zip(items, reasons):
        item["because"] = because
    return how


def _history(engine: Engine, user: object | None, history: Sequence[tuple[object, float]]
             ) -> tuple[np.ndarray, np.ndarray, str]:
    """(item indices, weights, how) of what the answer folded in (`Engine.folded_history`, positive weights); for
    a known user without feedback, their training items with their stored weights, whose fold-in is checked
    against the served vector."""
    if user is None or user not in engine.users or len(history):
        items, weights = engine.folded_history(user, history)
        return items[weights > 0], weights[weights > 0], "exact"
    u = engine.users.index(user, "user")
    row = slice(engine.seen.indptr[u], engine.seen.indptr[u + 1])
    known, stored = engine.seen.indices[row], np.asarray(engine.seen.data[row], np.float32)
    vector, served = engine.fold_in(known, stored), engine.user_vectors[u]
    close = np.linalg.norm(vector - served) <= EXACT_TOL * max(np.linalg.norm(served), 1e-12)
    return known, stored, "exact" if close else "fold-in"
