"""SASRec: next-item recommendation by causal self-attention over a user's time-ordered history, served in numpy.

Kang & McAuley (2018), "Self-attentive sequential recommendation": item embeddings (shared with the output layer,
so a score is the dot product of the last position's output with an item embedding) scaled by sqrt(factors),
learned positional embeddings, `n_layers` transformer blocks with causal attention, and a padding index. Each
user's training history is ordered by time (`recsys.data.user_histories`: ties by the splits' seeded draw; an
untimed log keeps its row order) and cut into windows of `max_len` inputs, the last window ending at the last
item, so that every prefix predicts its next item once per epoch (the standard next-item targets).

Loss: 'softmax', cross-entropy over the whole catalogue at every position. Petrov & Macdonald (2023, "gSASRec:
reducing overconfidence in sequential recommendation trained with negative sampling") show that SASRec's
original binary cross-entropy with one sampled negative is overconfident and ranks well below a full softmax;
'sampled' is the softmax over the positive and `n_negatives` items shared by the batch, drawn uniformly or by
popularity, with the logQ correction (each candidate's logit less log(n_negatives x its sampling probability))
so that popularity sampling does not push popular items down, for catalogues too wide for the full softmax.
'auto' (the default) takes the full softmax while an epoch's output layer costs at most SOFTMAX_WORK
multiply-adds (training positions x items x factors: ml-latest-small's 100k x 9.7k x 64 is 6e10), else 'sampled'.

Serving needs no torch: the bundle holds the item embeddings as item vectors, each training user's encoded
history as their user vector, and the transformer's weights as a `recsys.sequence.SequenceEncoder`, which the
'sequence' fold-in runs on a history in its given order. Early stopping on validation NDCG@10 (the user's
encoded training history scored against the later items) through `recsys.models.loop.fit_loop`.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Interactions, user_histories
from ..exceptions import DataValidationError
from ..foldin import FoldIn
from ..params import BOOL, Float, Int, Interval, Options
from ..sequence import LAYER_WEIGHTS, SequenceEncoder
from .base import Exported, Recommender
from .loop import fit_loop, ndcg_validator, optimise, resolve_device, seed_everything

EPS = 1e-6  # the layer norms' epsilon (the numpy encoder reads it from the bundle)
ENCODE_BATCH = 1024  # users encoded at once for the exported user vectors
SOFTMAX_WORK = 2e11  # loss 'auto': the most output-layer multiply-adds per epoch for the full softmax


class SASRec(Recommender):
    """Self-attentive sequential recommendation (see the module docstring).

    factors: embedding size. n_layers / n_heads (must divide factors): transformer blocks and attention heads.
    max_len: the most recent items a user vector reads. dropout: on embeddings, attention weights and
    sub-layer outputs in training. lr / weight_decay: AdamW's. batch_size: windows per step. loss: 'auto', 'softmax'
    (full catalogue) or 'sampled' (`n_negatives` shared negatives from `sampling`: 'uniform' or 'popularity',
    with the logQ correction). epochs / patience: early stopping on validation NDCG@10 when `fit` gets a
    validation set (max_val_users: the sample it is judged on). max_seconds: a bound on training time, checked
    between batches. device: 'auto' takes a GPU when there is one; none is needed. Weights are ignored.
    """

    name: ClassVar[str] = "sasrec"
    _parameter_constraints: ClassVar[dict] = {
        "factors": Interval(int, 1), "n_layers": Interval(int, 1), "n_heads": Interval(int, 1),
        "max_len": Interval(int, 1), "dropout": Interval(float, 0, 1), "lr": Interval(float, 0, closed_low=False),
        "weight_decay": Interval(float, 0), "batch_size": Interval(int, 1), "epochs": Interval(int, 1),
        "patience": Interval(int, 1), "loss": Options(("auto", "softmax", "sampled")), "n_negatives": Interval(int, 1),
        "sampling": Options(("uniform", "popularity")), "seed": Interval(int, 0),
        "device": Options(("auto", "cpu", "cuda", "mps")), "progress": BOOL,
        "max_val_users": Interval(int, 1, none_ok=True), "max_seconds": Interval(float, 0, none_ok=True),
    }
    search_space: ClassVar[dict] = {
        "factors": Int(16, 256, log=True), "n_layers": Int(1, 3), "dropout": Float(0.0, 0.6, limits=("low",)),
        "lr": Float(2e-4, 1e-2, log=True)}
    # early stopping and pruning judge each epoch on a fixed sample of 2,000 validation users, as for MF
    trial_defaults: ClassVar[dict] = {"max_val_users": 2000}
    inactive_when: ClassVar[dict] = {"n_negatives": ("loss", ("softmax",)), "sampling": ("loss", ("softmax",))}

    def __init__(self, *, factors: int = 64, n_layers: int = 2, n_heads: int = 1, max_len: int = 50,
                 dropout: float = 0.2, lr: float = 1e-3, weight_decay: float = 0.0, batch_size: int = 128,
                 epochs: int = 200, patience: int = 10, loss: str = "auto", n_negatives: int = 256,
                 sampling: str = "uniform", seed: int = 0, device: str = "auto", progress: bool = True,
                 max_val_users: int | None = 5000, max_seconds: float | None = None):
        self.factors = factors
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.max_len = max_len
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.patience = patience
        self.loss = loss
        self.n_negatives = n_negatives
        self.sampling = sampling
        self.seed = seed
        self.device = device
        self.progress = progress
        self.max_val_users = max_val_users
        self.max_seconds = max_seconds

    def _fit(self, train: Interactions, validation: Interactions | None) -> Exported:
        if self.factors % self.n_heads:
            raise DataValidationError(f"The 'n_heads' parameter of SASRec must divide 'factors' ({self.factors}). "
                                      f"Got {self.n_heads}.")
        gen = seed_everything(self.seed)
        device = resolve_device(self.device)
        n_items = train.n_items
        indptr, items = user_histories(train)  # ties as the bundle's seen matrix orders them (recsys.models.base.seen_matrix)
        inputs, targets = training_windows(indptr, items, self.max_len, pad=n_items)
        loss = self.loss if self.loss != "auto" else \
            "softmax" if float(len(items) - len(indptr) + 1) * n_items * self.factors <= SOFTMAX_WORK else "sampled"
        recent = torch.as_tensor(recent_items(indptr, items, self.max_len, pad=n_items))
        has_history = np.diff(indptr) > 0
        net = SASRecNetwork(n_items, self.factors, self.n_layers, self.n_heads, self.max_len, self.dropout,
                            gen).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        counts = np.bincount(train.item_index, minlength=n_items).astype(np.float64)
        q = counts / counts.sum() if self.sampling == "popularity" else np.full(n_items, 1.0 / n_items)
        # logQ: log of each item's expected count among the negatives (0 draws: never a negative, any value)
        log_q = torch.as_tensor(np.log(np.maximum(self.n_negatives * q, 1e-30)), dtype=torch.float32,
                                device=device)
        q = torch.as_tensor(q, dtype=torch.float32)

        def losses(order: torch.Tensor):
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                seqs, tgts = trim(inputs[idx], targets[idx], n_items)
                negatives = None
                if loss == "sampled":
                    negatives = (torch.multinomial(q, self.n_negatives, replacement=True, generator=gen)
                                 if self.sampling == "popularity" else
                                 torch.randint(n_items, (self.n_negatives,), generator=gen)).to(device)
                yield self._batch_loss(net, seqs.to(device).long(), tgts.to(device).long(), negatives, log_q)

        def run_epoch(epoch: int) -> float:
            net.train()
            return optimise(opt, losses(torch.randperm(len(inputs), generator=gen)))

        def snapshot() -> Exported:
            net.eval()
            users = np.zeros((train.n_users, self.factors), np.float32)
            rows = np.flatnonzero(has_history)
            with torch.no_grad():
                for start in range(0, len(rows), ENCODE_BATCH):
                    part = rows[start:start + ENCODE_BATCH]
                    seqs, _ = trim(recent[part], None, n_items)
                    users[part] = net(seqs.to(device).long())[:, -1].cpu().numpy()
            if len(rows) < train.n_users:  # no training history: the mean user, as an empty fold-in gives
                users[~has_history] = users[rows].mean(axis=0) if len(rows) else 0.0
            return Exported(net.item_vectors(), users, foldin=FoldIn("sequence"), similarity="cosine",
                            sequence=net.encoder())

        result = fit_loop(epochs=self.epochs, run_epoch=run_epoch, snapshot=snapshot,
                          validate=ndcg_validator(train, validation, self.max_val_users, self.seed),
                          patience=self.patience, progress=self.progress, desc=f"SASRec({loss})",
                          max_seconds=self.max_seconds)
        exported = result.best_state
        exported.extra = result.facts(device=str(device), windows=len(inputs), loss=loss)
        return exported

    def _batch_loss(self, net: SASRecNetwork, seqs: torch.Tensor, targets: torch.Tensor,
                    negatives: torch.Tensor | None, log_q: torch.Tensor) -> torch.Tensor:
        """Mean next-item cross-entropy over the positions of a batch of windows that have a target."""
        has_target = targets >= 0
        hidden, t = net(seqs)[has_target], targets[has_target]
        table = net.items[:-1]  # the padding row is never a candidate
        if negatives is None:
            return F.cross_entropy(hidden @ table.T, t)
        positive = (hidden * table[t]).sum(-1, keepdim=True) - log_q[t][:, None]
        sampled = (hidden @ table[negatives].T - log_q[negatives][None, :]).masked_fill(
            negatives[None, :] == t[:, None], float("-inf"))  # a draw of the target itself is not a negative
        logits = torch.cat([positive, sampled], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long, device=logits.device))


class SASRecNetwork(torch.nn.Module):
    """SASRec's trainable parts: item embeddings (n_items + 1 rows, the last one padding) and the weights of
    `recsys.sequence.SequenceEncoder` under the same names; `forward` is the encoder's computation in torch with
    dropout (the numpy encoder repeats it without)."""

    def __init__(self, n_items: int, factors: int, n_layers: int, n_heads: int, max_len: int, dropout: float,
                 gen: torch.Generator):
        super().__init__()
        self.n_items, self.factors, self.n_layers, self.n_heads = n_items, factors, n_layers, n_heads
        self.max_len = max_len
        self.scale = math.sqrt(factors)  # embeddings enter scaled by sqrt(factors), as in SASRec
        self.drop = torch.nn.Dropout(dropout)

        def xavier(rows: int, cols: int) -> torch.nn.Parameter:  # seeded CPU draws: the same start on any device
            return torch.nn.Parameter(torch.randn(rows, cols, generator=gen) * math.sqrt(2.0 / (rows + cols)))

        self.items = torch.nn.Parameter(torch.randn(n_items + 1, factors, generator=gen) / math.sqrt(factors))
        weights = {"pos": xavier(max_len, factors)}
        for name in [f"layer{i}_{w}" for i in range(n_layers) for w in LAYER_WEIGHTS] + ["ln_w", "ln_b"]:
            if name.rsplit("_", 1)[-1] in ("wq", "wk", "wv", "wo", "w1", "w2"):
                weights[name] = xavier(factors, factors)
            else:  # biases 0, layer norm scales (named '..._w') 1
                weights[name] = torch.nn.Parameter(torch.full((factors,), float(name.endswith("_w"))))
        self.weights = torch.nn.ParameterDict(weights)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """(batch, length, factors) outputs of left-padded item index windows (padding: n_items)."""
        w, (_, length) = self.weights, seqs.shape
        real = seqs != self.n_items
        x = self.drop(self.items[seqs] * self.scale + w["pos"][self.max_len - length:])
        causal = torch.ones(length, length, dtype=torch.bool, device=seqs.device).tril()
        allowed = causal & (real[:, None, :] | torch.eye(length, dtype=torch.bool, device=seqs.device))
        for i in range(self.n_layers):
            p = f"layer{i}_"
            x = x + self.drop(self._attention(self._norm(x, p + "ln1_"), allowed, p))
            h = self._norm(x, p + "ln2_")
            x = x + self.drop(self.drop(torch.relu(h @ w[p + "w1"] + w[p + "b1"])) @ w[p + "w2"] + w[p + "b2"])
        return self._norm(x, "ln_")

    def _norm(self, x: torch.Tensor, p: str) -> torch.Tensor:
        return F.layer_norm(x, (self.factors,), self.weights[p + "w"], self.weights[p + "b"], EPS)

    def _attention(self, h: torch.Tensor, allowed: torch.Tensor, p: str) -> torch.Tensor:
        w, (n, length, d) = self.weights, h.shape

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(n, length, self.n_heads, d // self.n_heads).transpose(1, 2)
        q, k, v = (split(h @ w[p + m] + w[p + b]) for m, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))
        logits = (q @ k.transpose(-1, -2) / math.sqrt(d // self.n_heads)).masked_fill(~allowed[:, None],
                                                                                       float("-inf"))
        att = self.drop(torch.softmax(logits, dim=-1))
        return (att @ v).transpose(1, 2).reshape(n, length, d) @ w[p + "wo"] + w[p + "bo"]

    def item_vectors(self) -> np.ndarray:
        return self.items[:-1].detach().cpu().numpy().copy()

    def encoder(self) -> SequenceEncoder:
        """The transformer's weights as numpy arrays (copies: the snapshot of this moment)."""
        return SequenceEncoder(self.max_len, self.n_layers, self.n_heads, self.factors,
                               {k: v.detach().cpu().numpy().copy() for k, v in self.weights.items()},
                               scale=self.scale, eps=EPS)


# ----------------------------------------------------------------------------------------------- windows
def training_windows(indptr: np.ndarray, items: np.ndarray, max_len: int, pad: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (n_windows, max_len) int32 (half of int64's memory; batches are widened as they
    are used): every user's history (items[indptr[u]:indptr[u+1]],
    oldest first) cut into windows from its end, input j followed by target j; inputs left-padded with `pad`,
    targets -1 where there is none. Each item after a user's first is one target, once."""
    n = np.diff(indptr)
    user = np.repeat(np.arange(len(n)), n)
    rank = np.arange(len(items)) - indptr[user]  # position within the user's history
    keep = rank >= 1  # every item but the first is a target, its predecessor the input beside it
    back = (n[user] - 1 - rank)[keep]  # steps from the user's last item
    first = np.zeros(len(n) + 1, np.int64)
    np.cumsum(((n - 1).clip(0) + max_len - 1) // max_len, out=first[1:])  # ceil((n - 1) / max_len) windows each
    window = first[user[keep]] + back // max_len
    column = max_len - 1 - back % max_len
    inputs = np.full((first[-1], max_len), pad, np.int32)
    targets = np.full((first[-1], max_len), -1, np.int32)
    inputs[window, column] = items[np.flatnonzero(keep) - 1]
    targets[window, column] = items[keep]
    return torch.as_tensor(inputs), torch.as_tensor(targets)


def recent_items(indptr: np.ndarray, items: np.ndarray, max_len: int, pad: int) -> np.ndarray:
    """(n_users, max_len) int32: each user's last max_len items, left-padded with `pad` (what encodes them)."""
    n = np.diff(indptr)
    user = np.repeat(np.arange(len(n)), n)
    back = n[user] - 1 - (np.arange(len(items)) - indptr[user])
    keep = back < max_len
    out = np.full((len(n), max_len), pad, np.int32)
    out[user[keep], max_len - 1 - back[keep]] = items[keep]
    return out


def trim(seqs: torch.Tensor, targets: torch.Tensor | None, pad: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The columns from the first that holds an item in any row (left padding only: the rest is all padding)."""
    filled = (seqs != pad).any(dim=0)
    start = int(filled.float().argmax()) if bool(filled.any()) else seqs.shape[1] - 1
    return seqs[:, start:], None if targets is None else targets[:, start:]
