"""The service as a real process: a free loopback port, start (gunicorn, or `recsys serve`), wait until ready,
stop. Shared by the process tests (tests/test_server_process.py) and benchmarks/serving.py; the port, the
child environment and `stop` are `recsys.service`'s, which `LocalService` uses too.

    port = free_port()
    proc = start([str(BIN / "recsys"), "serve", "--bundle", "models", "--port", str(port)], environment())
    try:
        wait_ready(proc, port)
        status, body = get(port, "/v1/users/1/recommendations?k=3")
    finally:
        stop(proc)

Every process starts in a session of its own, so `stop` reaches gunicorn's workers too (also with SIGKILL).
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from recsys.service import environment, free_port, stop

__all__ = ["BIN", "ROOT", "children", "environment", "free_port", "get", "get_json", "log_tail", "start", "stop",
           "wait_ready"]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtualenv's gunicorn and recsys


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of GET http://127.0.0.1:port/path, on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def get_json(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict]:
    status, body = get(port, path, timeout)
    return status, json.loads(body)


def start(cmd: list[str], env: dict[str, str], log: Path | None = None, stderr_to_log: bool = False
          ) -> subprocess.Popen:
    """Run `cmd` from the repository root in a new session; stdout (and stderr with stderr_to_log) is
    appended to `log`, else discarded."""
    out = subprocess.DEVNULL if log is None else log.open("ab")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT if stderr_to_log and log else subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        if log is not None:
            out.close()


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 60, workers: int = 0, name: str = "server",
               log: Path | None = None) -> float:
    """Seconds until GET /readyz answers 200 and `proc` has at least `workers` child processes (gunicorn's
    workers). Raises RuntimeError, with the end of `log`, if it exits or is not ready within `timeout`."""
    started = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}" + (f"; see {log}:\n{log_tail(log)}"
                                                                           if log else ""))
        try:
            if get(port, "/readyz", timeout=2)[0] == 200 and len(children(proc.pid)) >= workers:
                return time.perf_counter() - started
        except OSError:
            pass
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{name} not ready after {timeout:.0f} s" + (f":\n{log_tail(log)}" if log else ""))
        time.sleep(0.25)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (gunicorn's workers), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def log_tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
