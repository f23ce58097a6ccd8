"""Run by tests/test_distributed.py under `torchrun --standalone --nproc_per_node=2`: trains iALS and MF (each
loss) data-parallel on the tests' synthetic log, with a validation split (so early stopping is decided across
ranks), and rank 0 writes every model's exported vectors to the .npz file named on the command line."""
from __future__ import annotations

import sys

import numpy as np

from recsys import distributed
from recsys.data import read_interactions, temporal_split
from recsys.datasets import make_synthetic
from recsys.models import make_model

# name -> (model, parameters): shared with the test, which fits the same in one process
CASES = {
    "ials-cg": ("ials", {"factors": 8, "epochs": 4}),
    "ials-cholesky": ("ials", {"factors": 8, "epochs": 3, "solver": "cholesky"}),
    "mf-softmax": ("mf", {"factors": 8, "epochs": 4}),
    "mf-bpr": ("mf", {"factors": 8, "epochs": 3, "loss": "bpr"}),
    "mf-sampled": ("mf", {"factors": 8, "epochs": 3, "loss": "sampled", "negatives": 50}),
}


def log_split():
    ds = make_synthetic(n_users=300, n_items=200, n_factors=4, interactions_per_user=15, seed=7)
    inter = read_interactions(ds.interactions, user_col="user", item_col="item", weight_col="rating",
                              time_col="timestamp")
    return temporal_split(inter, test_fraction=0.2)


def fit_all() -> dict[str, np.ndarray]:
    train, valid = log_split()
    out = {}
    for case, (name, params) in CASES.items():
        model = make_model(name, progress=False, device="cpu", **params).fit(train, valid)
        out[f"{case}/items"] = model.exported_.item_vectors
        out[f"{case}/users"] = model.exported_.user_vectors
        out[f"{case}/best_epoch"] = np.array(model.exported_.extra["best_epoch"])
        out[f"{case}/rows_share"] = np.array(model.exported_.extra["rows_share"])  # of the rows it computed
    return out


if __name__ == "__main__":
    assert distributed.init(), "run me under torchrun with more than one process"
    result = fit_all()
    result["world_size"] = np.array(distributed.world_size())
    if distributed.is_main():
        np.savez(sys.argv[1], **result)
