"""A real PostgreSQL server for the tests: Debian's binaries (`make services` installs them), a fresh cluster in
a temporary folder, listening on a free loopback port with trust authentication, removed when stopped.

    with PostgresServer() as pg:
        store = FeedbackStore(pg.url)

PostgreSQL refuses to run as root; as root the server runs as the `postgres` user the Debian package creates.
Where the binaries are missing the tests that need them are skipped, unless RECSYS_REQUIRE_SERVICES=1 (set by
`make test`), where they fail: CI must not pass by skipping them.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from recsys.service import free_port

__all__ = ["PostgresServer", "find_bin", "missing_reason"]


def find_bin() -> Path | None:
    """The folder holding pg_ctl and initdb (Debian keeps them in /usr/lib/postgresql/<version>/bin)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def missing_reason() -> str | None:
    """Why no server can be started here, or None."""
    if find_bin() is None:
        return "PostgreSQL's pg_ctl and initdb are not installed (`make services` installs Debian's postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no `postgres` user to run the server as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (the `postgres` extra: pip install -e '.[postgres]')"
    return None


class PostgresServer:
    """initdb + pg_ctl start on 127.0.0.1:<free port>; `url` is a SQLAlchemy URL for its `postgres` database."""

    def __init__(self) -> None:
        self.bin = find_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
        self.data = self.dir / "data"
        self.url = f"postgresql+psycopg://recsys@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    def start(self) -> Self:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "recsys", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "server.log"), "-w",
                  "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
