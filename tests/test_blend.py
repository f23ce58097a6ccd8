"""recsys.models.blend: a weighted sum of standardised component scores, served as concatenated vectors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from contract import RecommenderContract

from recsys.exceptions import DataValidationError
from recsys.foldin import BlendPart, FoldIn
from recsys.models import Blend, make_model
from recsys.models.blend import score_spread, spread_users

EASE_IALS = (("ease", {"l2": 10.0}), ("ials", {"factors": 8, "epochs": 4}))
EASE_SPECTRAL = (("ease", {"l2": 10.0}), ("spectral", {"factors": 16, "low_pass": 4}))


class TestBlend(RecommenderContract):
    def make_model(self):
        return Blend(components=EASE_IALS, weights=(0.6, 0.4))


def scores(model, users=None):
    exported = model.exported_
    u = exported.user_vectors if users is None else exported.user_vectors[users]
    return u.astype(np.float64) @ exported.item_vectors.T.astype(np.float64)


def test_scores_are_the_weighted_sum_of_standardised_component_scores(synthetic_split):
    """The blend's dot product equals sum_j w_j S_j / spread_j, spread_j measured on the seeded user sample."""
    train, _ = synthetic_split
    weights = (0.7, 0.3)
    blend = Blend(components=EASE_IALS, weights=weights).fit(train)
    components = [make_model(name, **params).fit(train) for name, params in EASE_IALS]
    users = spread_users(train, 0)
    expected = sum(w * scores(m) / score_spread(m.exported_, users) for w, m in zip(weights, components))
    np.testing.assert_allclose(scores(blend), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # each standardised component contributes on one scale: its spread over the sample is its weight
    for w, m in zip(weights, components):
        assert np.mean(np.std(w * scores(m, users) / score_spread(m.exported_, users), axis=1)) == pytest.approx(w)


def test_one_weight_zero_ranks_as_the_other_component(synthetic_split):
    train, _ = synthetic_split
    blend = Blend(components=EASE_SPECTRAL, weights=(0.0, 1.0)).fit(train)
    spectral = make_model(*EASE_SPECTRAL[1][:1], **EASE_SPECTRAL[1][1]).fit(train)
    users = train.users.to_ids(np.arange(20))
    assert (blend.recommend(users, k=5)[0] == spectral.recommend(users, k=5)[0]).all()


def test_fold_in_repeats_each_components_own_fold_in(synthetic_split):
    """A training user's history folded in gives back their training vector where every component's fold-in is
    exact (EASE's indicator or Woodbury projection, the spectral projection), and concatenates the components'
    fold-ins in general (iALS's ridge solve)."""
    train, _ = synthetic_split
    blend = Blend(components=EASE_SPECTRAL, weights=(0.5, 0.5)).fit(train)
    seen = train.matrix()
    for u in range(5):
        history = seen.indices[seen.indptr[u]:seen.indptr[u + 1]]
        np.testing.assert_allclose(blend.engine_.fold_in(history), blend.user_vectors_[u], rtol=1e-4, atol=1e-5)
    blend = Blend(components=EASE_IALS, weights=(0.5, 0.5)).fit(train)
    parts = blend.exported_.foldin.parts
    ials = make_model("ials", **EASE_IALS[1][1]).fit(train)
    history = seen.indices[seen.indptr[0]:seen.indptr[1]]
    folded = blend.engine_.fold_in(history)
    np.testing.assert_allclose(folded[parts[0].dims:] / parts[1].user_scale, ials.engine_.fold_in(history),
                               rtol=1e-3, atol=1e-4)


def test_a_saved_blend_folds_in_and_ranks_as_before(synthetic_split, tmp_path):
    train, _ = synthetic_split
    blend = Blend(components=EASE_IALS, weights=(0.5, 0.5)).fit(train)
    blend.save(tmp_path / "b")
    loaded = Blend.load(tmp_path / "b")
    history = train.items.to_ids(np.array([0, 3, 5]))
    assert (loaded.recommend_for_history(history, k=5)[0] == blend.recommend_for_history(history, k=5)[0]).all()
    assert loaded.get_params() == blend.get_params()
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["foldin"]["method"] == "blend"


@pytest.mark.parametrize(("params", "message"), [
    ({"components": [("nope", {})]}, "The 'components' parameter of Blend must be a non-empty list of"),
    ({"components": [("blend", {})]}, "The 'components' parameter of Blend must be"),
    ({"components": []}, "The 'components' parameter of Blend must be"),
    ({"weights": (1.0, -0.5)}, r"The 'weights' parameter of Blend must be a non-empty list of finite numbers >= 0"),
    ({"weights": (0.0, 0.0)}, "not all 0"),
    ({"weights": (1.0,)}, r"must have one weight per component \(2\). Got 1: \[1.0\]"),
])
def test_bad_parameters_name_the_parameter_and_value(synthetic_split, params, message):
    with pytest.raises(DataValidationError, match=message):
        Blend(**params).fit(synthetic_split[0])


def test_an_unknown_component_parameter_is_an_error(synthetic_split):
    with pytest.raises(DataValidationError, match="Invalid parameter 'lambda' for EASE"):
        Blend(components=[("ease", {"lambda": 1.0}), ("ials", {})]).fit(synthetic_split[0])


def test_blend_fold_in_config_round_trips_and_is_checked():
    config = FoldIn("blend", parts=(BlendPart(FoldIn("ridge", reg=0.5), 4, 0.2),
                                    BlendPart(FoldIn("linear"), 2)))
    assert FoldIn.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(DataValidationError, match="needs its 'parts'"):
        FoldIn("blend")
    with pytest.raises(DataValidationError, match="cannot itself be a blend"):
        BlendPart(config, 6)
    with pytest.raises(DataValidationError, match="'user_scale' must be a finite number. Got nan"):
        BlendPart(FoldIn("mean"), 2, float("nan"))
    with pytest.raises(DataValidationError, match="cover 6 columns; the item vectors have 5"):
        config.user_vector(np.ones((3, 5), np.float32), np.array([1]))


def test_a_blend_manifest_is_read_back_key_for_key(synthetic_split, tmp_path):
    """The manifest's fold-in is JSON on both sides: a blend's parts as a list, no 'parts' key for other models."""
    from recsys.bundle import verify

    train, _ = synthetic_split
    path = Blend(components=EASE_SPECTRAL, weights=(0.5, 0.5)).fit(train).save(tmp_path / "b")
    raw = json.loads((path / "manifest.json").read_text())
    assert verify(path).to_dict() == raw and len(raw["foldin"]["parts"]) == 2
    assert "parts" not in FoldIn("ridge").to_dict()
