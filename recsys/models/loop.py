"""Shared training machinery for the torch models: device choice, seeding, the epoch loop with early stopping.

Training state (modules, optimisers) lives here and in the model's `_fit`; only exported arrays leave.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed

if TYPE_CHECKING:
    from ..data import Interactions

log = logging.getLogger("recsys")
VALIDATION_BLOCK = 2**22  # scores held at once by the per-epoch validator (16 MiB of float32)


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; anything else is passed to torch.device."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a CPU generator for shuffling and sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class LoopResult:
    best_state: object
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cut_by_time: bool = False  # max_seconds ended the fit before its epochs (the only wall-clock bound)

    def facts(self, **more: Any) -> dict:
        """The training facts a model's bundle records (`Exported.extra`)."""
        return {"best_epoch": self.best_epoch, "epochs_run": len(self.history), "history": self.history,
                "train_seconds": round(self.seconds, 2), "cut_by_time": self.cut_by_time, **more}


# Called as hook(epoch, validation metric) after each validated epoch of any `fit_loop` in its context (see
# `on_validation`); the tuner reports to Optuna through it, and a hook may raise to stop training (pruning).
_VALIDATION_HOOK: contextvars.ContextVar[Callable[[int, float], None] | None] = contextvars.ContextVar(
    "recsys_validation_hook", default=None)


@contextlib.contextmanager
def on_validation(hook: Callable[[int, float], None]) -> Iterator[None]:
    """Within this context every `fit_loop` calls `hook(epoch, metric)` after each validated epoch; an
    exception the hook raises ends the fit (the tuner prunes unpromising trials this way)."""
    token = _VALIDATION_HOOK.set(hook)
    try:
        yield
    finally:
        _VALIDATION_HOOK.reset(token)


# perf_counter() time after which `optimise` takes no more steps: set by `fit_loop(max_seconds=)`, so that one
# long epoch cannot overrun a trial's time bound.
_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar("recsys_deadline", default=math.inf)


def optimise(optimizer: torch.optim.Optimizer, losses: Iterable[torch.Tensor]) -> float:
    """One pass of gradient steps, one per loss the iterable yields (a batch each); the mean loss. Past the
    deadline of an enclosing `fit_loop(max_seconds=)` the pass ends early."""
    total, steps = 0.0, 0
    deadline = _DEADLINE.get()
    for loss in losses:
        if steps and deadline < math.inf and _past(deadline):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        steps += 1
    return total / max(steps, 1)


def ndcg_validator(train: Interactions, validation: Interactions | None, max_users: int | None, seed: int
                   ) -> Callable[[Any], float] | None:
    """`validate(exported) -> NDCG@10` on `validation` (training items excluded) for `fit_loop`; None
    without a validation split. The value equals `recsys.evaluation.evaluate(engine, validation, 10,
    max_users=, seed=)`: the same users, exclusions, `topk` and metric, with the per-call set-up done once
    (this runs every epoch)."""
    if validation is None:
        return None
    from ..metrics import ranking_metrics
    from ..retrieval import topk

    relevant = validation.matrix(binary=True)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    relevant = relevant[users]
    seen = train.matrix(binary=True)[users].tocoo()  # row-ordered
    step = max(1, VALIDATION_BLOCK // max(train.n_items, 1))
    starts = np.arange(0, len(users), step)
    bounds = np.searchsorted(seen.row, np.append(starts, len(users)))  # each block's seen pairs

    def validate(state: Any) -> float:
        items = np.asarray(state.item_vectors, np.float32)
        queries = np.asarray(state.user_vectors, np.float32)[users]
        top = np.empty((len(users), 10), np.int64)
        for b, start in enumerate(starts):
            scores = queries[start:start + step] @ items.T
            pairs = slice(bounds[b], bounds[b + 1])
            scores[seen.row[pairs] - start, seen.col[pairs]] = -np.inf
            top[start:start + step] = topk(scores, 10)[0]
        return ranking_metrics(top, relevant, 10, n_items=train.n_items)["ndcg@10"]
    return validate


def fit_loop(*, epochs: int, run_epoch: Callable[[int], float], snapshot: Callable[[], object],
             validate: Callable[[object], float] | None = None, patience: int = 3, progress: bool = True,
             desc: str = "training", max_seconds: float | None = None) -> LoopResult:
    """Run `run_epoch(epoch) -> mean loss` up to `epochs` times.

    With `validate(state) -> metric` (higher is better) the loop keeps the best `snapshot()` and stops after
    `patience` epochs without improvement, or a quarter of the epochs up to the best one if that is longer
    (`stale_limit`: a slowly converging fit, such as ALS with a small unobserved weight, climbs for a hundred
    epochs through plateaus of a few); without it, the last state is kept. `max_seconds`: no epoch starts
    after that much time, and gradient steps (`optimise`) stop within the epoch that crosses it (the tuner
    bounds a trial this way; the best state so far is kept).
    """
    start = time.perf_counter()
    token = _DEADLINE.set(start + max_seconds if max_seconds is not None else math.inf)
    try:
        return _loop(epochs, run_epoch, snapshot, validate, patience, progress, desc, max_seconds, start)
    finally:
        _DEADLINE.reset(token)


def _loop(epochs: int, run_epoch: Callable[[int], float], snapshot: Callable[[], object],
          validate: Callable[[object], float] | None, patience: int, progress: bool, desc: str,
          max_seconds: float | None, start: float) -> LoopResult:
    history: list[dict] = []
    best_state, best_epoch, best_metric, stale = None, 0, -np.inf, 0
    hook = _VALIDATION_HOOK.get()
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False, unit="epoch")
    for epoch in bar:
        loss = run_epoch(epoch)
        record = {"epoch": epoch, "loss": round(float(loss), 6)}
        state = snapshot()
        if validate is None:
            best_state, best_epoch = state, epoch
        else:
            metric = float(validate(state))
            record["val_ndcg@10"] = round(metric, 6)
            if metric > best_metric:
                best_state, best_epoch, best_metric, stale = state, epoch, metric, 0
            else:
                stale += 1
            if hook is not None:
                hook(epoch, metric)
        history.append(record)
        bar.set_postfix({k: v for k, v in record.items() if k != "epoch"})
        log.debug("%s epoch %d: %s", desc, epoch, record)
        if validate is not None and stale >= stale_limit(patience, best_epoch):
            log.info("%s: early stop at epoch %d (best epoch %d, val ndcg@10 %.4f)", desc, epoch, best_epoch,
                     best_metric)
            break
        if max_seconds is not None and epoch < epochs and _past(start + max_seconds):
            log.info("%s: stopped after epoch %d: max_seconds=%g reached (best epoch %d)", desc, epoch,
                     max_seconds, best_epoch)
            break
    # past the deadline: the loop stopped for it, or its last pass was ended by it (`optimise`)
    cut = max_seconds is not None and _past(start + max_seconds)
    return LoopResult(best_state, best_epoch, history, time.perf_counter() - start, cut)


def stale_limit(patience: int, best_epoch: int) -> int:
    """Epochs without improvement after which `fit_loop` stops: `patience`, or a quarter of the epochs it took
    to reach the best so far, whichever is longer."""
    return max(patience, best_epoch // 4)


def _past(deadline: float) -> bool:
    """Whether perf_counter() is past `deadline`; under torch.distributed, rank 0's answer (clocks differ, and
    a rank that stopped alone would leave the others waiting in a collective)."""
    late = time.perf_counter() > deadline
    return distributed.agree(late) if distributed.active() else late
