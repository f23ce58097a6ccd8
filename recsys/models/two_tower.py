"""Two-tower retrieval model with item features, trained with in-batch softmax and the logQ correction.

Item tower: an item id embedding plus the item's features from `Interactions.item_metadata`, each feature
column a mean of token embeddings (`ItemFeaturizer`: categorical values, multi-valued lists such as genres
or tags, lowercase word tokens of text such as titles, bucketised numbers such as years). Items without
training interactions keep no id embedding, so their vectors come from features alone (cold start); id
dropout during training makes warm items lean on their features too.

User tower: the user id embedding plus the mean of the item-tower vectors of the user's history. Folding in
an unseen user is therefore exactly the tower with a zero id embedding, which the engine's numpy
`{"method": "mean"}` fold-in computes from the exported item vectors: serving needs no torch.

Training: batches of (user, item) pairs; the other items of the batch (and optionally `negatives` items drawn
uniformly) are the negatives of a softmax over cosine similarities / `temperature`. In-batch negatives are
drawn in proportion to popularity, which a plain softmax would learn as a penalty on popular items; the logQ
correction of Yi et al. (2019, "Sampling-bias-corrected neural modeling for large corpus item
recommendations") subtracts the log of each candidate's expected count in the candidate set,
log(B p_j + M / N_warm) for batch size B, training frequency p_j, M uniform negatives over N_warm items.
Early stopping on validation NDCG@10 via `recsys.models.loop.fit_loop`. Interactions count as binary (weights
are ignored). Each batch computes every item's vector (for the users' histories), so a step costs
O(catalogue x factors) on top of the batch: fine for catalogues up to about a million items on a GPU.
"""
from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..data import Interactions
from ..exceptions import DataValidationError
from ..features import ColumnList, FeatureSpec, ItemFeaturizer, ItemTower
from ..foldin import FoldIn
from ..params import BOOL, Float, Int, Interval, Options
from .base import Exported, Recommender
from .loop import fit_loop, ndcg_validator, optimise, resolve_device, seed_everything

log = logging.getLogger("recsys")

class _Bags:
    """A CSR matrix as `F.embedding_bag` inputs: row r of `matrix @ weight` is a weighted sum of rows of weight."""

    def __init__(self, matrix: sp.csr_matrix, device: torch.device):
        self.matrix = matrix
        self.device = device
        self.inputs = self._inputs(matrix)  # the whole matrix, converted once

    def _inputs(self, matrix: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(matrix.indices, dtype=torch.long, device=self.device),
                torch.as_tensor(matrix.indptr[:-1], dtype=torch.long, device=self.device),
                torch.as_tensor(matrix.data, dtype=torch.float32, device=self.device))

    def __call__(self, weight: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """`matrix @ weight` (or only `rows` of it); empty rows give zeros."""
        indices, offsets, weights = self.inputs if rows is None else self._inputs(self.matrix[rows])
        if len(weight) == 0:
            return torch.zeros(len(offsets), weight.shape[1], device=weight.device)
        return F.embedding_bag(indices, weight, offsets, mode="sum", per_sample_weights=weights)


# --------------------------------------------------------------------------------------------- model
class TwoTower(Recommender):
    """Two-tower retrieval with item features and cold-start items (see the module docstring).

    factors: embedding size. temperature: softmax temperature over cosine similarities. logq: strength of
    the logQ correction (1 = Yi et al.; 0 = none). negatives: uniform negatives per batch on top of the
    in-batch ones. id_dropout: probability that an item's (per batch) or a user's (per pair) id embedding is
    left out in training, so that features and history carry the vectors. reg: L2 penalty on the id
    embeddings used. features / text_columns / max_vocab / min_count / n_buckets: see `ItemFeaturizer`;
    features=[] trains without features; text_columns (e.g. ['name', 'description']) adds their pretrained
    sentence-encoder vector as one more feature (the `text` extra). epochs / patience: early stopping on validation NDCG@10 when `fit` gets a
    validation set. max_seconds: a bound on training time, checked between batches (None: none).
    """

    name: ClassVar[str] = "two_tower"
    _parameter_constraints: ClassVar[dict] = {
        "factors": Interval(int, 1), "epochs": Interval(int, 1), "batch_size": Interval(int, 2),
        "lr": Interval(float, 0, closed_low=False), "temperature": Interval(float, 0, closed_low=False),
        "logq": Interval(float, 0, 1), "negatives": Interval(int, 0), "id_dropout": Interval(float, 0, 1),
        "reg": Interval(float, 0), "features": FeatureSpec(), "text_columns": ColumnList(), "max_vocab": Interval(int, 1),
        "min_count": Interval(int, 1), "n_buckets": Interval(int, 1),
        "init_std": Interval(float, 0, closed_low=False), "patience": Interval(int, 1), "seed": Interval(int, 0),
        "device": Options(("auto", "cpu", "cuda", "mps")), "progress": BOOL,
        "max_val_users": Interval(int, 1, none_ok=True), "max_seconds": Interval(float, 0, none_ok=True),
    }
    search_space: ClassVar[dict] = {
        "factors": Int(16, 256, log=True), "lr": Float(3e-4, 3e-2, log=True),
        "temperature": Float(0.02, 1.0, log=True), "id_dropout": Float(0.0, 0.8, limits=("low",)),
        "logq": Float(0.3, 1.0, limits=("high",))}
    # early stopping and pruning judge each epoch on a fixed sample of 2,000 validation users (scoring them is
    # most of a trial's time on a wide catalogue); a trial's value is still measured on every validation user
    trial_defaults: ClassVar[dict] = {"max_val_users": 2000}

    def __init__(self, *, factors: int = 64, epochs: int = 100, batch_size: int = 1024, lr: float = 0.005,
                 temperature: float = 0.1, logq: float = 1.0, negatives: int = 0, id_dropout: float = 0.5,
                 reg: float = 0.0, features: dict[str, str] | list[str] | None = None,
                 text_columns: list[str] | None = None, max_vocab: int = 10_000,
                 min_count: int = 2, n_buckets: int = 10, init_std: float = 0.05, patience: int = 5, seed: int = 0,
                 device: str = "auto", progress: bool = True, max_val_users: int | None = 5000,
                 max_seconds: float | None = None):
        self.factors = factors
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.temperature = temperature
        self.logq = logq
        self.negatives = negatives
        self.id_dropout = id_dropout
        self.reg = reg
        self.features = features
        self.text_columns = text_columns
        self.max_vocab = max_vocab
        self.min_count = min_count
        self.n_buckets = n_buckets
        self.init_std = init_std
        self.patience = patience
        self.seed = seed
        self.device = device
        self.progress = progress
        self.max_val_users = max_val_users
        self.max_seconds = max_seconds

    # --------------------------------------------------------------------------------------- training
    def _featurize(self, train: Interactions, warm: np.ndarray) -> sp.csr_matrix:
        """Fit the featuriser on the items with training interactions; the items' feature matrix."""
        meta = train.item_metadata
        if meta is None and (self.features or self.text_columns):
            raise DataValidationError("TwoTower features were requested but the Interactions have no "
                                      "item_metadata (pass item_metadata= to read_interactions).")
        featurizer = ItemFeaturizer(self.features if meta is not None else [], max_vocab=self.max_vocab,
                                    min_count=self.min_count, n_buckets=self.n_buckets,
                                    text_columns=self.text_columns or ())
        meta = pd.DataFrame({"item": train.items.ids}) if meta is None else meta
        self.featurizer_ = featurizer.fit(meta, rows=np.flatnonzero(warm))
        log.info("TwoTower features: %s", self.featurizer_.describe() or "none (ids only)")
        return self.featurizer_.transform(meta)

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        gen = seed_everything(self.seed)
        device = resolve_device(self.device)
        seen = train.matrix(binary=True)
        counts = np.asarray(seen.sum(axis=0)).ravel()
        warm = counts > 0
        towers = _Towers(_Bags(seen, device), self._featurize(train, warm), warm, self.factors, self.init_std,
                         gen, device)
        opt = torch.optim.Adam(towers.parameters(), lr=self.lr)
        freq = torch.as_tensor(counts / counts.sum(), dtype=torch.float32, device=device)
        warm_index = torch.as_tensor(np.flatnonzero(warm), dtype=torch.long)
        history_len = torch.as_tensor(np.diff(seen.indptr), dtype=torch.float32, device=device)
        u_all = torch.as_tensor(np.repeat(np.arange(train.n_users), np.diff(seen.indptr)), dtype=torch.long)
        i_all = torch.as_tensor(seen.indices, dtype=torch.long)

        def run_epoch(epoch: int) -> float:
            order = torch.randperm(len(u_all), generator=gen)
            batches = (order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size))
            return optimise(opt, (self._batch_loss(towers, u_all[idx], i_all[idx], seen, history_len, freq,
                                                   warm_index, gen) for idx in batches))

        def snapshot() -> Exported:
            with torch.no_grad():
                items = towers.items(towers.warm)
                history = towers.histories(items) / history_len.clamp(min=1)[:, None]
                users = F.normalize(towers.user_id + history, dim=1)
            # the feature half of the item tower travels with the vectors: a new item's vector without retraining
            tower = ItemTower(self.featurizer_, towers.feature.detach().cpu().numpy().copy())
            return Exported(items.cpu().numpy().copy(), users.cpu().numpy().copy(), foldin=FoldIn("mean"),
                            similarity="cosine", item_tower=tower)

        result = fit_loop(epochs=self.epochs, run_epoch=run_epoch, snapshot=snapshot,
                          validate=ndcg_validator(train, validation, self.max_val_users, self.seed),
                          patience=self.patience, progress=self.progress, desc="TwoTower", max_seconds=self.max_seconds)
        exported = result.best_state
        exported.extra = result.facts(device=str(device), features=self.featurizer_.describe(),
                                      items_without_interactions=int((~warm).sum()))
        return exported

    def _batch_loss(self, towers: _Towers, u: torch.Tensor, i: torch.Tensor, seen: sp.csr_matrix,
                    history_len: torch.Tensor, freq: torch.Tensor, warm_index: torch.Tensor,
                    gen: torch.Generator) -> torch.Tensor:
        """In-batch (+ uniform) sampled softmax with the logQ correction for one batch of (user, item) pairs."""
        device = towers.user_id.device
        keep_items = towers.warm * (torch.rand(len(towers.warm), generator=gen) >= self.id_dropout).to(device)
        keep_users = (torch.rand(len(u), generator=gen) >= self.id_dropout).to(device)
        items = towers.items(keep_items)
        users, inverse = torch.unique(u, return_inverse=True)
        sums = towers.histories(items, users.numpy())
        u, i, inverse = u.to(device), i.to(device), inverse.to(device)
        # the user's history without the target item itself, averaged (zero for a one-item history)
        history = (sums[inverse] - items[i]) / (history_len[u] - 1).clamp(min=1)[:, None]
        queries = F.normalize(history + keep_users[:, None] * towers.user_id[u], dim=1)
        candidates = i
        if self.negatives:
            drawn = torch.randint(len(warm_index), (self.negatives,), generator=gen)
            candidates = torch.cat([i, warm_index[drawn].to(device)])
        logits = queries @ items[candidates].T / self.temperature
        logits = logits - self.logq * logq_correction(freq[candidates], len(i), self.negatives, len(warm_index))
        loss = sampled_softmax_loss(logits, i, candidates)
        if self.reg:
            used = (towers.user_id[u] ** 2).sum() + (keep_items[i, None] * towers.item_id[i] ** 2).sum()
            loss = loss + self.reg * used / len(i)
        return loss


class _Towers(torch.nn.Module):
    """The trainable parts: user and item id embeddings, feature token embeddings (training only)."""

    def __init__(self, histories: _Bags, features: sp.csr_matrix, warm: np.ndarray, factors: int,
                 init_std: float, gen: torch.Generator, device: torch.device):
        super().__init__()

        def init(rows: int) -> torch.nn.Parameter:  # on CPU with the seeded generator: same on every device
            return torch.nn.Parameter((torch.randn(rows, factors, generator=gen) * init_std).to(device))

        n_users = histories.matrix.shape[0]
        self.user_id, self.item_id, self.feature = init(n_users), init(len(warm)), init(features.shape[1])
        self.features = _Bags(features, device)
        self.histories = histories
        self.warm = torch.as_tensor(warm, dtype=torch.float32, device=device)

    def items(self, keep: torch.Tensor) -> torch.Tensor:
        """Unit item vectors: id embedding where `keep` (1/0 per item) plus the mean token embedding per column."""
        return F.normalize(keep[:, None] * self.item_id + self.features(self.feature), dim=1)


def logq_correction(freq: torch.Tensor, batch: int, negatives: int, n_warm: int) -> torch.Tensor:
    """log of each candidate's expected count in the candidate set: `batch` in-batch draws in proportion to
    its training frequency `freq`, plus `negatives` uniform draws over `n_warm` items."""
    return torch.log(batch * freq + negatives / max(n_warm, 1))


def sampled_softmax_loss(logits: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of row b against column b; other columns holding row b's own item are masked out (the
    same item twice in a batch is not its own negative)."""
    n = len(positives)
    clash = candidates[None, :] == positives[:, None]
    clash[:, :n] &= ~torch.eye(n, dtype=torch.bool, device=logits.device)
    return F.cross_entropy(logits.masked_fill(clash, float("-inf")), torch.arange(n, device=logits.device))
