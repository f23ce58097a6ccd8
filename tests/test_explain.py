"""recsys.explain: each recommended item's reasons are the history items that caused it (tested for meaning on a
planted log), and they add up to its score."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data import read_interactions
from recsys.explain import explain
from recsys.models import make_model

FAST = {"ials": {"factors": 16, "epochs": 8}, "mf": {"factors": 16, "epochs": 20}, "ease": {"l2": 10.0},
        "spectral": {"factors": 16, "low_pass": 8}, "itemknn": {"neighbours": 20},
        "two_tower": {"factors": 16, "epochs": 10}}


@pytest.fixture(scope="module")
def planted():
    """Two tastes that never mix: every user takes four of the 'a' items or four of the 'b' items."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(300):
        group = "ab"[u % 2]
        for i in rng.choice(8, 4, replace=False):
            rows.append((f"u{u}", f"{group}{i}"))
    return read_interactions(pd.DataFrame(rows, columns=["user", "item"]))


@pytest.mark.parametrize("name", list(FAST))
def test_the_planted_cause_ranks_first(planted, name):
    """A new user with one 'a' item and one 'b' item: an 'a' item is recommended because of the 'a' item, a 'b'
    item because of the 'b' item."""
    params = {**FAST[name], **({"progress": False, "device": "cpu"} if name in ("ials", "mf", "two_tower") else {})}
    engine = make_model(name, **params).fit(planted).engine_
    history = [("a0", 1.0), ("b0", 1.0)]
    rec = engine.recommend_user(None, k=6, history=history)
    reasons, how = explain(engine, None, rec.item_ids, history=history)
    assert how == "exact"
    for item, because in zip(rec.item_ids, reasons):
        assert because and because[0]["item"] == f"{item[0]}0", (name, item, because)


def test_the_reasons_add_up_to_the_score_and_say_how(planted):
    """Contributions sum to the folded-in score (the shares to 1); iALS's own users are exact (their vectors are
    the solve fold-in repeats), MF's are the fold-in's split; an unknown user without history has none."""
    ials = make_model("ials", **FAST["ials"], progress=False, device="cpu").fit(planted).engine_
    history = [("a0", 1.0), ("a1", 2.0), ("b3", 1.0)]
    items = ials.items.to_index([i for i, _ in history])
    targets = ials.items.to_index(["a2", "b4", "a5"])
    _, contrib = ials.contributions(items, np.array([w for _, w in history], np.float32), targets)
    vector = ials.fold_in(items, np.array([w for _, w in history], np.float32))
    np.testing.assert_allclose(contrib.sum(axis=0), ials.item_vectors[targets] @ vector, rtol=1e-4, atol=1e-6)
    rec = ials.recommend_user("u0", k=3)
    reasons, how = explain(ials, "u0", rec.item_ids)
    assert how == "exact" and all(r and r[0]["item"].startswith("a") for r in reasons)
    mf = make_model("mf", **FAST["mf"], progress=False, device="cpu").fit(planted).engine_
    assert explain(mf, "u0", mf.recommend_user("u0", k=2).item_ids)[1] == "fold-in"
    assert explain(ials, "stranger", ["a1"]) == ([[]], "none")
