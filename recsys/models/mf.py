"""Matrix factorisation in PyTorch: score(u, i) = user_u . item_i, learned from implicit feedback.

Losses: 'softmax' (multinomial likelihood over the full catalogue, batched by user: one user's row of logits
serves all their positives, so an epoch costs n_users x n_items x factors, not nnz x n_items x factors),
'sampled' (softmax against `negatives` items sampled uniformly, shared by the batch of interactions, for
catalogues too large for full softmax) and 'bpr' (Bayesian personalised ranking, one uniform negative per
positive).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..data import Interactions
from ..foldin import FoldIn
from ..params import BOOL, Float, Int, Interval, Options
from .base import Exported, Recommender
from .loop import fit_loop, ndcg_validator, optimise, resolve_device, seed_everything


class MF(Recommender):
    """Matrix factorisation trained with mini-batch Adam.

    factors: embedding size. epochs: maximum epochs (early stopping on validation NDCG@10 when `fit` gets a
    validation set; `patience` epochs without improvement stop it). reg: L2 penalty on the embeddings used in
    each batch. foldin_reg: ridge penalty when folding in an unseen user from their history. max_seconds: a
    bound on training time, checked between batches (None: none; the tuner bounds trials this way).
    """

    name: ClassVar[str] = "mf"
    _parameter_constraints: ClassVar[dict] = {
        "factors": Interval(int, 1), "epochs": Interval(int, 1), "batch_size": Interval(int, 1),
        "user_batch_size": Interval(int, 1), "item_bias": BOOL,
        "lr": Interval(float, 0, closed_low=False), "reg": Interval(float, 0),
        "loss": Options(("softmax", "sampled", "bpr")), "negatives": Interval(int, 1),
        "init_std": Interval(float, 0, closed_low=False), "patience": Interval(int, 1),
        "foldin_reg": Interval(float, 0, closed_low=False), "seed": Interval(int, 0),
        "device": Options(("auto", "cpu", "cuda", "mps")), "progress": BOOL,
        "max_val_users": Interval(int, 1, none_ok=True), "max_seconds": Interval(float, 0, none_ok=True),
    }
    search_space: ClassVar[dict] = {"factors": Int(16, 512, log=True, limits=("high",)),
                                    "reg": Float(1e-4, 1.0, log=True), "lr": Float(1e-3, 5e-2, log=True)}
    # early stopping and pruning judge each epoch on a fixed sample of 2,000 validation users (scoring them is
    # most of a trial's time on a wide catalogue); a trial's value is still measured on every validation user
    trial_defaults: ClassVar[dict] = {"max_val_users": 2000}

    def __init__(self, *, factors: int = 256, epochs: int = 300, loss: str = "softmax", lr: float = 0.005,
                 reg: float = 0.03, item_bias: bool = True, batch_size: int = 1024, user_batch_size: int = 64,
                 negatives: int = 1000, init_std: float = 0.1, patience: int = 10, foldin_reg: float = 10.0, seed: int = 0, device: str = "auto",
                 progress: bool = True, max_val_users: int | None = 5000,
                 max_seconds: float | None = None):
        self.factors = factors
        self.epochs = epochs
        self.batch_size = batch_size
        self.user_batch_size = user_batch_size
        self.item_bias = item_bias
        self.lr = lr
        self.reg = reg
        self.loss = loss
        self.negatives = negatives
        self.init_std = init_std
        self.patience = patience
        self.foldin_reg = foldin_reg
        self.seed = seed
        self.device = device
        self.progress = progress
        self.max_val_users = max_val_users
        self.max_seconds = max_seconds

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        gen = seed_everything(self.seed)
        device = distributed.device_for(resolve_device(self.device))
        net = _Factors(train.n_users, train.n_items, self.factors, self.init_std, gen, device, self._batch_loss)
        opt = torch.optim.Adam([net.users.weight, net.items.weight] + ([net.bias] if self.item_bias else []),
                               lr=self.lr)
        step = net
        if distributed.active():  # gradients all-reduced in backward; see recsys.distributed
            step = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda"
                                                             else None)
        u_all = torch.as_tensor(train.user_index, dtype=torch.long)
        i_all = torch.as_tensor(train.item_index, dtype=torch.long)
        foldin = FoldIn("ridge", reg=self.foldin_reg)
        seen = train.matrix(binary=True)
        seen_counts = torch.as_tensor(np.diff(seen.indptr))
        rows = {"mine": 0, "global": 0}  # of the global batches' rows, how many this process computed

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, int, float]]:
            """(this rank's users, their targets, the global batch's size, the loss's global denominator): every
            rank draws the same global batches and takes its part (all of it in a single process)."""
            if self.loss == "softmax":  # batches of users with their dense rows of positives
                order = torch.randperm(train.n_users, generator=gen)
                for start in range(0, len(order), self.user_batch_size):
                    u = order[start:start + self.user_batch_size]
                    mine = u[distributed.part(len(u))]
                    rows["mine"], rows["global"] = rows["mine"] + len(mine), rows["global"] + len(u)
                    targets = torch.as_tensor(seen[mine.numpy()].toarray())
                    yield mine.to(device), targets.to(device), len(u), float(seen_counts[u].sum())
            else:
                order = torch.randperm(len(u_all), generator=gen)
                for start in range(0, len(order), self.batch_size):
                    idx = order[start:start + self.batch_size]
                    mine = idx[distributed.part(len(idx))]
                    rows["mine"], rows["global"] = rows["mine"] + len(mine), rows["global"] + len(idx)
                    yield u_all[mine].to(device), i_all[mine].to(device), len(idx), float(len(idx))

        def run_epoch(epoch: int) -> float:
            return optimise(opt, (step(u, target, n, denominator, gen) for u, target, n, denominator in batches()))

        def snapshot() -> Exported:
            item_vectors = net.items.weight.detach().cpu().numpy().copy()
            user_vectors = net.users.weight.detach().cpu().numpy().copy()
            if self.item_bias:  # score = u.v + b_i, as one inner product: [u, 1] . [v, b_i]
                item_vectors = np.hstack([item_vectors, net.bias.detach().cpu().numpy()[:, None]])
                user_vectors = np.hstack([user_vectors, np.ones((len(user_vectors), 1), np.float32)])
            return Exported(item_vectors, user_vectors, foldin=foldin, similarity_dims=self.factors)

        result = fit_loop(epochs=self.epochs, run_epoch=run_epoch, snapshot=snapshot,
                          validate=distributed.on_main(ndcg_validator(train, validation, self.max_val_users,
                                                                      self.seed)),
                          patience=self.patience, progress=self.progress, desc=f"MF({self.loss})", max_seconds=self.max_seconds)
        exported = result.best_state
        exported.extra = result.facts(device=str(device), world_size=distributed.world_size(),
                                      rows_share=round(rows["mine"] / max(rows["global"], 1), 4))
        return exported

    def _batch_loss(self, U: torch.Tensor, V: torch.Tensor, b: torch.Tensor, u: torch.Tensor, i: torch.Tensor,
                    n_global: int, denominator: float, gen: torch.Generator) -> torch.Tensor:
        """The loss of this rank's part (users u, targets i) of a global batch of n_global rows: its share of
        the global batch's loss (sums over the part divided by the global `denominator`), times the world
        size, since DDP averages the ranks' gradients. In a single process, the batch's loss."""
        device = U.device
        eu = U[u]
        n_items = V.shape[0]
        scale = distributed.world_size() / denominator
        if self.loss == "softmax":  # i: dense (users, items) rows of positives
            logp = torch.log_softmax(eu @ V.T + b, dim=1)
            loss = -(logp * i).sum()
            return scale * (loss + self.reg * ((eu ** 2).sum(1) * i.sum(1)).sum() +
                            self.reg * ((V ** 2).sum(1) * i.sum(0)).sum())
        ei = V[i]
        if self.loss == "sampled":  # negatives shared by the whole global batch
            neg = torch.randint(n_items, (min(self.negatives, n_items),), generator=gen).to(device)
            pos = (eu * ei).sum(-1, keepdim=True) + b[i][:, None]
            neg_scores = (eu @ V[neg].T + b[neg]).masked_fill(neg[None, :] == i[:, None], float("-inf"))
            logits = torch.cat([pos, neg_scores], dim=1)
            loss = F.cross_entropy(logits, torch.zeros(len(u), dtype=torch.long, device=device), reduction="sum")
        else:  # one negative per row of the global batch; this rank's part of them
            neg = torch.randint(n_items, (n_global,), generator=gen)[distributed.part(n_global)].to(device)
            loss = -F.logsigmoid((eu * ei).sum(-1) + b[i] - (eu * V[neg]).sum(-1) - b[neg]).sum()
            ei = torch.cat([ei, V[neg]])
        return scale * (loss + self.reg * ((eu ** 2).sum() + (ei ** 2).sum()))


class _Factors(torch.nn.Module):
    """MF's parameters (user and item embeddings, item biases) as a module, so DistributedDataParallel can
    wrap it; forward is the loss of a batch (`MF._batch_loss`)."""

    def __init__(self, n_users: int, n_items: int, factors: int, init_std: float, gen: torch.Generator,
                 device: torch.device, loss) -> None:
        super().__init__()
        self.users = torch.nn.Embedding(n_users, factors).to(device)
        self.items = torch.nn.Embedding(n_items, factors).to(device)
        for emb in (self.users, self.items):
            torch.nn.init.normal_(emb.weight, std=init_std, generator=gen) if device.type == "cpu" else \
                torch.nn.init.normal_(emb.weight, std=init_std)
        self.bias = torch.nn.Parameter(torch.zeros(n_items, device=device))
        self._loss = loss

    def forward(self, u: torch.Tensor, target: torch.Tensor, n_global: int, denominator: float,
                gen: torch.Generator) -> torch.Tensor:
        return self._loss(self.users.weight, self.items.weight, self.bias, u, target, n_global, denominator, gen)
