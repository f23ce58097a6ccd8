"""`recsys.spark.train_on_spark`: the torchrun job run by pyspark's TorchDistributor on a real Spark in
local mode (local[2]: two executor slots, a barrier stage of two ranks, rendezvous set up by Spark), with Java
and pyspark as `make install` / `make services` set them up. Skipped where either is missing, except under
`make test` (RECSYS_REQUIRE_SERVICES=1), where that fails."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from server_support import require_service

from recsys.data import read_interactions
from recsys.datasets import make_synthetic
from recsys.engine import load_engine
from recsys.pipeline import train_and_bundle

PARAMS = {"factors": 8, "epochs": 3, "progress": False}


def _missing() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (the `spark` extra: pip install -e '.[spark]')"
    java = shutil.which("java") or (os.environ.get("JAVA_HOME", "") + "/bin/java")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False, timeout=30).stderr
    except OSError:
        return "no Java runtime (`make services` installs Debian's openjdk-17-jre-headless)"
    version = re.search(r'version "(\d+)', out)
    if not version or int(version.group(1)) < 17:
        return f"pyspark 4 needs Java 17 or newer; found {out.splitlines()[:1]}"
    return None


@pytest.fixture(scope="module")
def spark():
    require_service(_missing())
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("recsys-tests")
               .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.executorEnv.OMP_NUM_THREADS", "1").getOrCreate())
    yield session
    session.stop()


def test_torch_distributor_trains_what_one_process_does(spark, tmp_path):
    from recsys.spark import train_on_spark

    ds = make_synthetic(n_users=300, n_items=200, n_factors=4, interactions_per_user=15, seed=7)
    log = tmp_path / "log.csv"
    ds.interactions.to_csv(log, index=False)
    read = {"user_col": "user", "item_col": "item", "weight_col": "rating", "time_col": "timestamp"}

    path = train_on_spark(str(log), str(tmp_path / "spark-models"), model="ials", params=PARAMS,
                          num_processes=2, index=False, **read)
    single = train_and_bundle(read_interactions(log, **read), model="ials", params=PARAMS,
                              out=tmp_path / "models", index=False, common={"progress": False})
    (parallel, bundle), (one, _) = load_engine(path), load_engine(single.bundle)
    assert bundle.manifest.training["world_size"] == 2  # two ranks trained it
    for a, b in ((parallel.item_vectors, one.item_vectors), (parallel.user_vectors, one.user_vectors)):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
