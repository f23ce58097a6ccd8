"""Run the REST service on this machine from Python (a notebook, a script): `recsys serve` in a child process.

recsys never imports the server: this starts `python -m recsys.cli serve` and talks HTTP to it.

    with LocalService("models") as service:
        service.get("/v1/users/1/recommendations?k=5")
"""
from __future__ import annotations

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
