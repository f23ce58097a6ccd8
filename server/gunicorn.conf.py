"""gunicorn settings for the recsys service: `recsys serve --bundle DIR` uses this file.

preload_app loads the bundle once in the master before forking: workers share the memory-mapped index
pages and the numpy arrays copy-on-write. Loopback only by default.
"""
import gc
import os
import sys
import tempfile

# One BLAS thread per request thread: with 2 workers x 4 threads on a few cores, OpenBLAS's own busy-waiting
# threads cost more than they save (measured: 9.9 -> ~4 ms of server CPU per recommendation). Must be set
# before the preloaded app imports numpy.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# How long a thread waiting for the GIL waits before it asks the holder to let go (CPython's default 5 ms).
# A request thread gives the GIL up around every socket call, SQLite query and scan, and waits for it again
# after. 1 ms: lower p99 for computed answers, bare unchanged (benchmarks/README.md, "Computed answers,
# fourth pass"). Set in the master, so every forked worker has it.
sys.setswitchinterval(float(os.environ.get("RECSYS_SWITCH_INTERVAL", "0.001")))

# Prometheus multiprocess mode: must be set before the app (and prometheus_client) is imported.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsys-metrics-"))

bind = os.environ.get("RECSYS_BIND", "127.0.0.1:8000")
# Two workers per CPU, two threads each. A keep-alive client's connections stay with the worker that accepted
# them, and with one worker per core, one worker often accepted most of them and ran alone on one core under
# its GIL (benchmarks/serving.py: 1.1 of 2 cores busy in about one run in three, for the bare app as well);
# with four workers on two cores it happens less often (benchmarks/README.md, "Computed answers").
workers = int(os.environ.get("RECSYS_WORKERS", str(2 * len(os.sched_getaffinity(0)))))
threads = int(os.environ.get("RECSYS_THREADS", "2"))
# gthread that accepts a connection only while one of its threads is free (server/worker.py): keep-alive
# connections spread over the workers instead of piling onto one
worker_class = os.environ.get("RECSYS_WORKER_CLASS", "server.worker.BalancedThreadWorker")
preload_app = True
timeout = 30
graceful_timeout = 20
accesslog = "-"
# one JSON object per request; "worker" is the answering worker's pid, as gunicorn writes it ("<1234>")
access_log_format = ('{"remote": "%(h)s", "request": "%(r)s", "status": %(s)s, "bytes": %(b)s, "ms": %(M)s, '
                     '"worker": "%(p)s"}')
wsgi_app = "server:create_app()"


def pre_fork(server, worker):
    """Freeze the preloaded app's objects (the loaded model, libraries) out of the garbage collector's reach
    before forking: a worker's full collection then walks only what it allocated itself. Measured in-process:
    a full collection over the loaded MovieLens model took ~57 ms (7 ms for the bare benchmark app), which
    showed up as p99.9 latency. It also keeps the shared pages from being dirtied by the collector."""
    gc.freeze()


def post_fork(server, worker):
    """Workers learn the master's pid, so /v1/admin/reload can ask it to replace every worker; pooled
    database connections inherited from the master are dropped (each worker opens its own)."""
    os.environ["RECSYS_MASTER_PID"] = str(server.pid)
    store = getattr(server.app.wsgi(), "extensions", {}).get("recsys_feedback")
    if store is not None:
        store.engine.dispose(close=False)


def on_reload(server):
    """SIGHUP: load the bundle `current` points at into the preloaded app (checksums verified) before gunicorn
    forks new workers; old workers finish their requests. A corrupt bundle is refused: the old one stays."""
    gc.unfreeze()  # the previous model may be collected once swapped out; pre_fork freezes the new one
    try:
        from server.state import get_state

        state = get_state(server.app.wsgi())
        state.load()
    except Exception as e:  # noqa: BLE001 - the master must survive any bad bundle
        server.log.error("Reload refused, still serving the previous bundle: %s", e)
    gc.collect()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
