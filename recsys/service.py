"""Run the REST service on this machine from Python (a notebook, a script): `recsys serve` in a child process.

recsys never imports the server: this starts `python -m recsys.cli serve` and talks HTTP to it.

    with LocalService("models") as service:
        service.get("/v1/users/1/recommendations?k=5")

The process helpers below it serve the process tests and benchmarks/serving.py too (gunicorn or `recsys serve`
started in a session of its own, so `stop` reaches its workers, also with SIGKILL):

    port = free_port()
    proc = start([str(BIN / "recsys"), "serve", "--bundle", "models", "--port", str(port)], environment())
    try:
        wait_ready(proc, port)
        status, body = get(port, "/v1/users/1/recommendations?k=3")
    finally:
        stop(proc)
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .exceptions import RecsysError

log = logging.getLogger("recsys")


ROOT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages) holding recsys and server
BIN = Path(sys.executable).parent  # the virtualenv's gunicorn and recsys


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def environment(**extra: str) -> dict[str, str]:
    """This process's environment plus `extra`, with this checkout first on PYTHONPATH: a child process runs
    the recsys and server packages beside this one, whatever an installed copy points at."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Send `sig` to the process's whole session (started with start_new_session: gunicorn's master and
    workers) and wait for it; SIGKILL after `timeout` seconds."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class LocalService:
    """The service for `bundle` on 127.0.0.1 (`port` None: a free one), started by `start` (or `with`), ready
    when /readyz answers 200, stopped by `stop`. `settings`: RECSYS_* variables for the service (e.g.
    {"FEEDBACK_DB_URL": "sqlite:///feedback.db", "API_KEYS": "k"})."""

    def __init__(self, bundle: str | Path, *, port: int | None = None, workers: int = 1,
                 settings: dict[str, str] | None = None, timeout: float = 60.0):
        self.bundle, self.port, self.workers = Path(bundle), port or free_port(), workers
        self.settings, self.timeout = dict(settings or {}), timeout
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalService:
        env = environment(**{f"RECSYS_{k}": str(v) for k, v in self.settings.items()})
        cmd = [sys.executable, "-m", "recsys.cli", "serve", "--bundle", str(self.bundle), "--port", str(self.port),
               "--workers", str(self.workers)]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the service's output, kept until the object goes
        self.process = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RecsysError(f"The service exited with code {self.process.returncode} before it was ready: "
                                  f"{self.output()[-2000:]}")
            try:
                if self._request("GET", "/readyz", None, 2.0)[0] == 200:
                    log.info("service ready at %s", self.url)
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RecsysError(f"The service on port {self.port} was not ready within {self.timeout:g} s.")

    def output(self) -> str:
        """What the service has printed so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def get(self, path: str) -> Any:
        """The JSON answer of GET `path` (an HTTP error answer is returned too: its problem document)."""
        return self._request("GET", path, None, 10.0)[1]

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self._request("POST", path, body, 10.0, headers)[1]

    def _request(self, method: str, path: str, body: Any, timeout: float,
                 headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self) -> None:
        """SIGTERM to the service's process group, SIGKILL after 10 s."""
        if self.process is not None and self.process.poll() is None:
            stop(self.process, timeout=10)

    def __enter__(self) -> LocalService:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
