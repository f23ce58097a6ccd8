"""Feedback events in a real database (SQLite by default; any SQLAlchemy URL, e.g. PostgreSQL).

An event is stored and committed before `add` returns, so an acknowledged write survives a crash. An optional
`event_id` makes writes idempotent: replaying the same id stores it once.

`history` runs on every recommendation request, and most users have no stored events. For a SQLite file the
store remembers (bounded, least recently used first out) which users had none, and skips the database for them
while nothing changed: `PRAGMA data_version` on a watcher connection of its own changes whenever any other
connection, in any process, commits to the file (a few microseconds to ask). On a change it reads only the
rows added since the last look (event ids grow with every commit: SQLite has one writer at a time and the
log is append-only) and forgets the users they name, so a new event changes that user's recommendations at
once in every gunicorn worker. In-memory SQLite can only be written through this store (`add` forgets the
users it writes). Other databases (e.g. PostgreSQL, whose sequence values are not assigned in commit order)
are always queried.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger("recsys")

metadata = sa.MetaData()
events = sa.Table(
    "feedback_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(128), unique=True, nullable=True),
    sa.Column("user_id", sa.String(256), nullable=False, index=True),
    sa.Column("item_id", sa.String(256), nullable=False),
    sa.Column("type", sa.String(64), nullable=False, default="interaction"),
    sa.Column("weight", sa.Float, nullable=False, default=1.0),
    sa.Column("ts", sa.Float, nullable=False),  # Unix seconds (UTC)
)


@dataclass(frozen=True)
class Event:
    user: str
    item: str
    weight: float = 1.0
    type: str = "interaction"
    timestamp: float | None = None  # Unix seconds; defaults to the time of writing
    event_id: str | None = None


class FeedbackStore:
    """Append-only event log. `url` is a SQLAlchemy database URL (default: a SQLite file).

    no_history_cache: how many users known to have no events to remember (SQLite only, see the module
    docstring; 0 turns it off). Writes must go through `add`, or, for a SQLite file, through any connection
    that commits normally; events are never deleted or rewritten.
    """

    def __init__(self, url: str = "sqlite:///feedback.db", no_history_cache: int = 100_000):
        self.url = url
        connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_durable)
        metadata.create_all(self.engine)
        self._history_sql = sa.text("SELECT item_id, weight FROM feedback_events WHERE user_id = :user "
                                    "ORDER BY ts, id")
        self._watch = _watch_mode(self.engine) if no_history_cache > 0 else None
        self._cache_size = no_history_cache
        self._no_history: OrderedDict[str, None] = OrderedDict()  # users without events, as of _generation
        self._generation = 0     # bumped whenever users may have been removed from _no_history
        self._last_id = 0        # largest event id the watcher has read
        self._watcher: sqlite3.Connection | None = None
        self._watcher_pid = 0    # a connection is never used across fork: each process opens its own
        self._inherited: list[sqlite3.Connection] = []
        self._data_version: int | None = None
        self._lock = threading.Lock()

    def add(self, batch: Iterable[Event]) -> tuple[int, int]:
        """Store events in one transaction, committed before returning; returns (stored, duplicates)."""
        now = dt.datetime.now(dt.timezone.utc).timestamp()
        rows = [{"event_id": e.event_id, "user_id": e.user, "item_id": e.item, "type": e.type,
                 "weight": float(e.weight), "ts": float(e.timestamp if e.timestamp is not None else now)}
                for e in batch]
        if not rows:
            return 0, 0
        insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(self.engine.dialect.name)
        stored = 0
        with self.engine.begin() as conn:  # commits on exit
            for row in rows:
                if insert is not None:
                    stmt = insert(events).values(**row).on_conflict_do_nothing(index_elements=["event_id"])
                    stored += conn.execute(stmt).rowcount
                else:  # other databases: check first (the unique constraint still guards duplicates)
                    dup = row["event_id"] is not None and conn.execute(
                        sa.select(events.c.id).where(events.c.event_id == row["event_id"])).first()
                    if not dup:
                        conn.execute(events.insert().values(**row))
                        stored += 1
        if self._watch is not None:
            self._forget({row["user_id"] for row in rows})
        return stored, len(rows) - stored

    def history(self, user: str) -> list[tuple[str, float]]:
        """(item, weight) of a user's events, oldest first. For a user remembered to have none, and nothing
        committed for them since, no query runs (SQLite)."""
        generation = None
        if self._watch is not None:
            with self._lock:
                self._sync()
                if user in self._no_history:
                    self._no_history.move_to_end(user)
                    return []
                generation = self._generation
        with self.engine.connect() as conn:  # a fixed statement: this runs on every recommendation request
            rows = conn.execute(self._history_sql, {"user": user}).all()
        if not rows and generation is not None:
            with self._lock:  # unless users were forgotten meanwhile: then this answer may be stale
                if generation == self._generation:
                    self._no_history[user] = None
                    if len(self._no_history) > self._cache_size:
                        self._no_history.popitem(last=False)
        return [(r[0], r[1]) for r in rows]

    def to_frame(self) -> pd.DataFrame:
        """Every event as a frame with columns user, item, weight, timestamp (UTC) and type."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events.c.user_id, events.c.item_id, events.c.weight, events.c.ts,
                                          events.c.type).order_by(events.c.id)).all()
        frame = pd.DataFrame(rows, columns=["user", "item", "weight", "ts", "type"])
        frame["timestamp"] = pd.to_datetime(frame.pop("ts"), unit="s", utc=True)
        return frame

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())

    def _forget(self, users: Iterable[str]) -> None:
        with self._lock:
            self._generation += 1
            for user in users:
                self._no_history.pop(user, None)

    def _sync(self) -> None:
        """Forget the users named by events committed since the last look (SQLite file; caller holds the
        lock). A new watcher connection (first use, or first use after a fork) cannot tell what changed
        before it opened: it starts from an empty memory and the newest event id."""
        if self._watch != "file":
            return
        fresh = self._watcher is None or self._watcher_pid != os.getpid()
        if fresh:
            if self._watcher is not None:  # inherited across fork: never use or close it here (SQLite's rule)
                self._inherited.append(self._watcher)
            self._watcher = sqlite3.connect(self.engine.url.database, timeout=30, isolation_level=None,
                                            check_same_thread=False)  # used under self._lock only
            self._watcher_pid = os.getpid()
        # read the version first: a commit landing after it changes the version again, so it is never missed
        version = self._watcher.execute("PRAGMA data_version").fetchall()[0][0]
        if not fresh and version == self._data_version:
            return
        self._generation += 1
        if fresh:
            self._no_history.clear()
            self._last_id = self._watcher.execute("SELECT max(id) FROM feedback_events").fetchall()[0][0] or 0
        else:
            rows = self._watcher.execute("SELECT user_id, max(id) FROM feedback_events WHERE id > ? "
                                         "GROUP BY user_id", (self._last_id,)).fetchall()
            for user, last in rows:
                self._no_history.pop(user, None)
                self._last_id = max(self._last_id, last)
        self._data_version = version


def _watch_mode(engine: sa.Engine) -> str | None:
    """'file' for a SQLite file (watched with PRAGMA data_version), 'local' for in-memory SQLite (only this
    store writes to it), None for anything else (always queried)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return "local"
    if database.startswith("file:") or engine.url.query:  # URI filenames and options: keep it simple
        return None
    return "file"


def _sqlite_durable(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a committed event is on disk
    cursor.close()
