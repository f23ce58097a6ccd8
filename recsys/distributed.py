"""Data-parallel training on torch.distributed, launched by `torchrun` (or by Spark's TorchDistributor).

Inside a process group of more than one rank, the models' `fit` trains together with the other ranks, and
every rank ends with the same fitted model:

* **iALS**: each half-step's rows (items, then users) are split into one contiguous block per rank, balanced
  by stored pairs; every rank solves its block and the blocks are all-gathered, so every rank holds all
  factors for the next half-step. The result equals single-process training up to float rounding.
* **MF** (the gradient model): `torch.nn.parallel.DistributedDataParallel`. Every rank draws the same global
  batch (the same seeded shuffle and negatives) and computes the loss of its share of it, normalised by the
  global batch; DDP's all-reduce makes each step the single-process step.
* Early stopping and time bounds are decided once, by rank 0, and broadcast, so no rank waits on a
  collective that the others skipped. Only rank 0 writes bundles (`is_main`).

Launch on one machine (gloo for CPU tensors; nccl for GPU ones where every rank has a GPU):

    torchrun --standalone --nproc_per_node=2 -m recsys.cli train --data log.csv --model ials --out models

On several machines, the same command on every node with a rendezvous instead of --standalone:

    torchrun --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d --rdzv-endpoint=head-node:29400 \\
        --rdzv-id=recsys-1 -m recsys.cli train --data /shared/log.parquet --model ials --out /shared/models

Every node must read the same log and, for the bundle, rank 0's `--out` must be where the service reads.
On a Spark cluster, `recsys.spark.train_on_spark` runs the same job through pyspark's TorchDistributor.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("recsys")

__all__ = ["active", "agree", "all_gather_rows", "broadcast_float", "check_same", "init", "is_main", "part", "rank", "shards",
           "world_size"]


def active() -> bool:
    """Whether this process is one rank of a group of more than one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or a single process: the one that writes files."""
    return rank() == 0


def init(backend: str = "auto") -> bool:
    """Join the process group that `torchrun` describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...);
    a no-op outside one, or when already joined. backend 'auto': gloo for CPU tensors, and nccl for CUDA
    tensors when this rank has a GPU of its own (LOCAL_RANK < the GPUs it sees), so a model on the CPU trains
    on a GPU host too. Returns whether this process is now one rank of several."""
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return active()
    if backend == "auto":
        backend = "cpu:gloo,cuda:nccl" if _own_gpu() else "gloo"
    if "nccl" in backend:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    log.info("recsys.distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return active()


def _own_gpu() -> bool:
    return torch.cuda.is_available() and int(os.environ.get("LOCAL_RANK", "0")) < torch.cuda.device_count()


def device_for(device: torch.device) -> torch.device:
    """Under torch.distributed each rank uses its own GPU (LOCAL_RANK), and the CPU when it has none."""
    if active() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if _own_gpu() else torch.device("cpu")
    return device


def check_same(name: str, values: tuple[int, ...]) -> None:
    """Raise unless every rank holds the same `values` (e.g. the shape of the data each rank read)."""
    mine = torch.tensor(values, dtype=torch.int64)
    everyone = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(everyone, mine)
    if any(not torch.equal(other, mine) for other in everyone):
        raise RuntimeError(f"The ranks read different {name}: {[tuple(t.tolist()) for t in everyone]}. Every "
                           "rank must read the same log (a shared file that does not change during the job).")


def shards(indptr: np.ndarray, n_shards: int) -> np.ndarray:
    """Boundaries (n_shards + 1) of contiguous row blocks of a CSR matrix, balanced by rows plus stored pairs
    (a half-step's cost grows with both)."""
    n_rows = len(indptr) - 1
    cost = np.arange(n_rows + 1) + (indptr - indptr[0])
    bounds = np.searchsorted(cost, np.linspace(0, cost[-1], n_shards + 1), side="left")
    bounds[0], bounds[-1] = 0, n_rows
    return np.maximum.accumulate(bounds)


def all_gather_rows(local: torch.Tensor, bounds: np.ndarray) -> torch.Tensor:
    """Concatenate every rank's block of rows (rank r holds rows bounds[r]:bounds[r + 1]) on every rank."""
    sizes = np.diff(bounds)
    padded = torch.zeros((int(sizes.max()), *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:len(local)] = local
    blocks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(blocks, padded)
    return torch.cat([block[:size] for block, size in zip(blocks, sizes)])


def broadcast_float(value: float | None) -> float:
    """Rank 0's value on every rank."""
    tensor = torch.tensor([value if value is not None else 0.0], dtype=torch.float64)  # CPU: gloo carries it
    dist.broadcast(tensor, 0)
    return float(tensor[0])


def agree(flag: bool) -> bool:
    """Rank 0's decision on every rank (e.g. to stop at a time bound: clocks differ between ranks)."""
    return bool(broadcast_float(float(flag)))


def on_main(validate: Callable[[Any], float] | None) -> Callable[[Any], float] | None:
    """`validate` run by rank 0 only, its value broadcast (every rank holds the same state)."""
    if validate is None or not active():
        return validate

    def shared(state: Any) -> float:
        return broadcast_float(validate(state) if is_main() else None)
    return shared


def part(n: int) -> slice:
    """This rank's share of a global batch of n rows (contiguous, sizes differing by at most one)."""
    bounds = np.linspace(0, n, world_size() + 1).round().astype(int)
    return slice(int(bounds[rank()]), int(bounds[rank() + 1]))
