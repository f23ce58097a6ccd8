"""recsys.foldin: the typed fold-in config every model exports, and the user solve it describes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys.exceptions import DataValidationError
from recsys.foldin import FoldIn, confidence, penalty
from recsys.models.ials import solve_rows


def test_round_trips_through_json_and_rejects_unknown_settings():
    config = FoldIn("ridge", reg=0.5, unobserved_weight=0.01, reg_exponent=1.0, confidence="log", alpha=2.0)
    assert FoldIn.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert FoldIn.from_dict(None) == FoldIn("mean")
    with pytest.raises(DataValidationError, match=r"Unknown fold-in setting\(s\) \['lr'\]"):
        FoldIn.from_dict({"method": "ridge", "lr": 0.1})


@pytest.mark.parametrize(("field", "value", "message"), [
    ("method", "median", "The fold-in 'method' must be one of"),
    ("confidence", "linear", "The fold-in 'confidence' must be one of"),
    ("reg", float("nan"), "The fold-in 'reg' must be a finite number. Got nan."),
    ("alpha", "1", "The fold-in 'alpha' must be a finite number. Got '1'."),
])
def test_bad_settings_name_the_field_and_value(field, value, message):
    with pytest.raises(DataValidationError, match=message):
        FoldIn(**{"method": "ridge", field: value})


def test_the_ridge_solve_repeats_ials_training_user_solve():
    """The serving-time solve (numpy) equals the training half-step (torch) for one user, iALS settings on."""
    rng = np.random.default_rng(0)
    items = rng.normal(size=(30, 4)).astype(np.float32)
    history, weights = np.array([3, 7, 7, 12]), np.array([1.0, 2.0, 1.0, 5.0], np.float32)
    config = FoldIn("ridge", reg=0.3, unobserved_weight=0.05, reg_exponent=0.5, confidence="log", alpha=2.0)
    folded = config.user_vector(items, history, weights)
    distinct, summed = np.array([3, 7, 12]), np.array([1.0, 3.0, 5.0])
    conf = confidence(summed, "log", 2.0)
    trained = solve_rows(torch.as_tensor(items), np.array([0, 3]), distinct, conf, reg=0.3, reg_exponent=0.5,
                         unobserved_weight=0.05)[0].numpy()
    np.testing.assert_allclose(folded, trained, rtol=1e-4, atol=1e-5)


def test_penalty_scales_with_history_length_and_unobserved_mass():
    assert penalty(2.0, 0.0, 0.1, 5, 100) == 2.0
    assert penalty(2.0, 1.0, 0.1, 5, 100) == pytest.approx(2.0 * 15)
    np.testing.assert_allclose(penalty(1.0, 0.5, 0.0, np.array([4, 9]), 10), [2.0, 3.0])


def test_mean_indicator_and_constant_methods():
    items = np.eye(3, dtype=np.float32)
    users = np.array([[1.0, 0, 0], [0, 1.0, 0]], np.float32)
    np.testing.assert_allclose(FoldIn("mean").user_vector(items, np.array([0, 1]), np.array([3.0, 1.0])),
                               [0.75, 0.25, 0])
    np.testing.assert_allclose(FoldIn("indicator").user_vector(items, np.array([2, 2])), [0, 0, 2.0])
    np.testing.assert_allclose(FoldIn("constant").user_vector(items, np.array([2]), user_vectors=users),
                               [0.5, 0.5, 0])
    np.testing.assert_allclose(FoldIn("ridge").user_vector(items, np.array([], np.int64)), [0, 0, 0])


def test_solve_spd_matches_lu_and_falls_back_where_not_positive_definite():
    """The ridge systems are solved by Cholesky; a matrix that is not positive definite still gets LU's answer
    (or its error, when singular)."""
    from recsys.foldin import solve_spd

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    a, b = x.T @ x + 0.1 * np.eye(16, dtype=np.float32), rng.standard_normal(16).astype(np.float32)
    np.testing.assert_allclose(solve_spd(a, b), np.linalg.solve(a.astype(np.float64), b), rtol=1e-4, atol=1e-5)
    indefinite = np.diag(np.array([2.0, -1.0, 3.0], np.float32))
    np.testing.assert_allclose(solve_spd(indefinite, np.ones(3, np.float32)), [0.5, -1.0, 1 / 3], rtol=1e-6)
    with pytest.raises(np.linalg.LinAlgError):
        solve_spd(np.zeros((3, 3), np.float32), np.ones(3, np.float32))
