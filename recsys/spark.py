"""`recsys train` on a Spark cluster: pyspark's TorchDistributor runs the torchrun job of `recsys.distributed`
(iALS row shards, MF under DDP) as a barrier stage on the executors. Needs the `spark` extra and a Java runtime.
"""
from __future__ import annotations

from typing import Any

__all__ = ["train_on_spark"]


def train_on_spark(data: str, out: str, *, model: str, params: dict[str, Any] | None = None,
                   num_processes: int = 2, use_gpu: bool = False, index: bool = True, **read: Any) -> str:
    """`recsys train` as a Spark job: pyspark's TorchDistributor starts `num_processes` ranks as a barrier stage
    on the active SparkSession's executors (each launched by torchrun, rendezvous set up by Spark), every rank
    reads the log at `data` (a path all executors see) with `read_interactions(**read)`, trains `model`
    data-parallel as under torchrun, and rank 0 publishes the bundle under `out` (with an index unless
    `index=False`); returns its path. Give each executor one thread per rank (spark.executorEnv.OMP_NUM_THREADS).

        spark = SparkSession.builder.master("spark://head:7077").getOrCreate()
        train_on_spark("/shared/log.parquet", "/shared/models", model="ials", user_col="user", item_col="item")
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    job = {"data": str(data), "out": str(out), "model": model, "params": dict(params or {}), "read": read,
           "index": index}
    return TorchDistributor(num_processes=num_processes, local_mode=False, use_gpu=use_gpu).run(_spark_rank, job)


def _spark_rank(job: dict[str, Any]) -> str:
    """One rank of `train_on_spark` (runs in an executor's process, under torchrun)."""
    from .data import read_interactions
    from .pipeline import train_and_bundle

    inter = read_interactions(job["data"], **job["read"])
    report = train_and_bundle(inter, model=job["model"], params=job["params"], out=job["out"], index=job["index"],
                              common={"progress": False})
    return str(report.bundle)
