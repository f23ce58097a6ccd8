"""Feedback events in a real database (SQLite by default; any SQLAlchemy URL, e.g. PostgreSQL).

An event is stored and committed before `add` returns, so an acknowledged write survives a crash. An optional
`event_id` makes writes idempotent: replaying the same id stores it once.

`history` runs on every recommendation request, and most users have no stored events. For a SQLite file the
store remembers (bounded, least recently used first out) which users had none, and skips the database for them
while nothing changed: `PRAGMA data_version` on a watcher connection of its own (one per thread) changes
whenever any other connection, in any process, commits to the file (a few microseconds to ask). On a change
it reads only the rows added since the last look (event ids grow with every commit: SQLite has one writer at
a time and the log is append-only) and forgets the users they name, so a new event changes that user's
recommendations at once in every gunicorn worker. Other databases (e.g. PostgreSQL, whose sequence values are not assigned in
commit order), and in-memory SQLite, are always queried. A SQLite file is read through one plain `sqlite3`
connection per thread (SQLAlchemy's connection checkout and result objects cost several times the query).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
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
    sa.Column("item_id", sa.String(256), nullable=False, index=True),
    sa.Column("type", sa.String(64), nullable=False, default="interaction"),
    sa.Column("weight", sa.Float, nullable=False, default=1.0),
    sa.Column("ts", sa.Float, nullable=False),  # Unix seconds (UTC)
    sa.Column("request_id", sa.String(64), nullable=True),  # the served answer the event responds to
)

served = sa.Table(  # what the service answered (a sampled share of its recommendation answers)
    "served_lists", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("user_id", sa.String(256), nullable=False, index=True),
    sa.Column("model_version", sa.String(256), nullable=False),
    sa.Column("variant", sa.String(64), nullable=True),
    sa.Column("items", sa.Text, nullable=False),  # a JSON list of item ids, best first
    sa.Column("fallback", sa.Boolean, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
)

added_items = sa.Table(  # items added to the served model without retraining (`recsys.additions`)
    "added_items", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("item_id", sa.String(256), unique=True, nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),  # a JSON object: the item's catalogue columns
    sa.Column("ts", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class Event:
    user: str
    item: str
    weight: float = 1.0
    type: str = "interaction"
    timestamp: float | None = None  # Unix seconds; defaults to the time of writing
    event_id: str | None = None
    request_id: str | None = None  # the served answer this event responds to (X-Request-Id)


@dataclass(frozen=True)
class Served:
    """One recommendation answer as served: `items` best first."""

    request_id: str
    user: str
    model_version: str
    items: tuple[str, ...]
    fallback: bool
    timestamp: float
    variant: str | None = None


HISTORY_SQL = "SELECT item_id, weight FROM feedback_events WHERE user_id = ? ORDER BY ts, id"


class _Readers:
    """One autocommit `sqlite3` connection per thread and process for reading a SQLite file (each query sees
    every commit before it). A connection inherited across fork is never used or closed in the child
    (SQLite's rule): the child opens its own."""

    def __init__(self, database: str):
        self.database = database
        self._local = threading.local()
        self._inherited: list[sqlite3.Connection] = []

    def get(self) -> sqlite3.Connection:
        local, pid = self._local, os.getpid()
        if getattr(local, "pid", None) != pid:
            if getattr(local, "connection", None) is not None:
                self._inherited.append(local.connection)
            local.connection = sqlite3.connect(self.database, timeout=30, isolation_level=None)
            local.pid = pid
        return local.connection


class FeedbackStore:
    """Append-only event log. `url` is a SQLAlchemy database URL (default: a SQLite file).

    no_history_cache: how many users known to have no events to remember (SQLite files only, see the module
    docstring; 0 turns it off). Any connection may write to the file, in any process, as long as events are
    only appended (never deleted or rewritten).
    """

    def __init__(self, url: str = "sqlite:///feedback.db", no_history_cache: int = 100_000):
        self.url = url
        connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_durable)
        _create_schema(self.engine)
        self._history_sql = sa.text(HISTORY_SQL.replace("?", ":user"))
        self._readers = _Readers(self.engine.url.database) if _is_sqlite_file(self.engine) else None
        self._memory = _NoHistory(no_history_cache, self._readers) \
            if no_history_cache > 0 and self._readers is not None else None

    def add(self, batch: Iterable[Event]) -> tuple[int, int]:
        """Store events in one transaction, committed before returning; returns (stored, duplicates)."""
        now = dt.datetime.now(dt.timezone.utc).timestamp()
        rows = [{"event_id": e.event_id, "user_id": e.user, "item_id": e.item, "type": e.type,
                 "weight": float(e.weight), "ts": float(e.timestamp if e.timestamp is not None else now),
                 "request_id": e.request_id} for e in batch]
        if not rows:
            return 0, 0
        stored = self._insert_new(events, "event_id", rows)
        if self._memory is not None:
            self._memory.forget({row["user_id"] for row in rows})
        return stored, len(rows) - stored

    def add_items(self, items: Iterable[tuple[str, Mapping[str, object]]]) -> tuple[int, int]:
        """Store (item id, attributes) of items added to the model, committed before returning; an id stored
        before is left as it was. Returns (stored, duplicates). Their interactions are events (`add`)."""
        now = dt.datetime.now(dt.timezone.utc).timestamp()
        rows = [{"item_id": str(i), "attributes": json.dumps(dict(a), default=str), "ts": now} for i, a in items]
        stored = self._insert_new(added_items, "item_id", rows)
        return stored, len(rows) - stored

    def _insert_new(self, table: sa.Table, unique: str, rows: list[dict]) -> int:
        """Insert `rows` into `table` in one transaction, committed on return, leaving out those whose `unique`
        column value is stored already; returns how many were stored."""
        insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(self.engine.dialect.name)
        stored = 0
        with self.engine.begin() as conn:  # commits on exit
            for row in rows:
                if insert is not None:
                    stmt = insert(table).values(**row).on_conflict_do_nothing(index_elements=[unique])
                    if self.engine.dialect.insert_returning:  # rowcount is -1 here under psycopg
                        stored += len(conn.execute(stmt.returning(table.c.id)).all())
                    else:  # SQLite before 3.35
                        stored += conn.execute(stmt).rowcount
                else:  # other databases: check first (the unique constraint still guards duplicates)
                    dup = row[unique] is not None and conn.execute(
                        sa.select(table.c.id).where(table.c[unique] == row[unique])).first()
                    if not dup:
                        conn.execute(table.insert().values(**row))
                        stored += 1
        return stored

    def add_served(self, batch: Iterable[Served]) -> int:
        """Store served answers in one transaction (what `server.recording` flushes); returns how many."""
        rows = [{"request_id": s.request_id, "user_id": s.user, "model_version": s.model_version,
                 "variant": s.variant, "items": json.dumps(list(s.items)), "fallback": bool(s.fallback),
                 "ts": float(s.timestamp)} for s in batch]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(served.insert(), rows)
        return len(rows)

    def served_frame(self, since: float | None = None) -> pd.DataFrame:
        """Served answers (since Unix time `since`) as a frame: request_id, user, model_version, variant, items
        (a list), fallback, ts."""
        query = sa.select(served.c.request_id, served.c.user_id, served.c.model_version, served.c.variant,
                          served.c["items"], served.c.fallback, served.c.ts).order_by(served.c.id)
        if since is not None:
            query = query.where(served.c.ts >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        frame = pd.DataFrame(rows, columns=["request_id", "user", "model_version", "variant", "items", "fallback",
                                            "ts"])
        frame["items"] = frame["items"].map(json.loads)
        return frame

    def last_added(self) -> int:
        """The id of the newest added item (0: none): what a service polls to see additions."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(added_items.c.id))).scalar_one() or 0)

    def added(self) -> list[tuple[str, dict, list[tuple[str, float]]]]:
        """Every added item, oldest first: (item id, attributes, its events' (user, weight) pairs)."""
        with self.engine.connect() as conn:
            items = conn.execute(sa.select(added_items.c.item_id, added_items.c.attributes)
                                 .order_by(added_items.c.id)).all()
            pairs: dict[str, list[tuple[str, float]]] = {item: [] for item, _ in items}
            if pairs:
                query = sa.select(events.c.item_id, events.c.user_id, events.c.weight).where(
                    events.c.item_id.in_(list(pairs))).order_by(events.c.id)
                for item, user, weight in conn.execute(query):
                    pairs[item].append((user, weight))
        return [(item, json.loads(attributes), pairs[item]) for item, attributes in items]

    def history(self, user: str) -> list[tuple[str, float]]:
        """(item, weight) of a user's events, oldest first. For a user remembered to have none, and nothing
        committed for them since, no query runs (SQLite)."""
        generation = None
        if self._memory is not None:
            generation = self._memory.lookup(user)
            if generation is None:
                return []
        if self._readers is not None:  # this runs on every recommendation request
            rows = self._readers.get().execute(HISTORY_SQL, (user,)).fetchall()
        else:
            with self.engine.connect() as conn:
                rows = conn.execute(self._history_sql, {"user": user}).all()
        if not rows and generation is not None:
            self._memory.remember(user, generation)
        return [(r[0], r[1]) for r in rows]

    def histories(self, users: Iterable[str]) -> dict[str, list[tuple[str, float]]]:
        """`history` of each of `users` in one query (those remembered to have none skip it)."""
        found: dict[str, list[tuple[str, float]]] = {u: [] for u in users}
        generations = {u: self._memory.lookup(u) for u in found} if self._memory is not None else {}
        ask = [u for u in found if self._memory is None or generations[u] is not None]
        if ask:
            query = sa.select(events.c.user_id, events.c.item_id, events.c.weight).where(
                events.c.user_id.in_(ask)).order_by(events.c.ts, events.c.id)
            with self.engine.connect() as conn:
                for user, item, weight in conn.execute(query):
                    found[user].append((item, weight))
        for user in ask:
            if not found[user] and generations.get(user) is not None:
                self._memory.remember(user, generations[user])
        return found

    def to_frame(self) -> pd.DataFrame:
        """Every event as a frame with columns user, item, weight, timestamp (UTC) and type."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events.c.user_id, events.c.item_id, events.c.weight, events.c.ts,
                                          events.c.type, events.c.request_id).order_by(events.c.id)).all()
        frame = pd.DataFrame(rows, columns=["user", "item", "weight", "ts", "type", "request_id"])
        frame["timestamp"] = pd.to_datetime(frame.pop("ts"), unit="s", utc=True)
        return frame

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())


class _NoHistory:
    """Users known to have no events in a SQLite file (bounded, least recently used out first), kept true by
    watching the file for commits from any connection."""

    def __init__(self, size: int, readers: _Readers):
        self.size, self.readers = size, readers
        self._users: OrderedDict[str, None] = OrderedDict()
        self._generation = 0  # bumped whenever users may have been forgotten: answers read before are stale
        self._last_id = 0     # the largest event id read by a catch-up in this process
        self._pid = 0         # the process this memory belongs to: it starts afresh after a fork
        self._local = threading.local()  # per thread: the data_version its connection saw last
        self._lock = threading.Lock()   # never held across a database call in the hot path

    def lookup(self, user: str) -> int | None:
        """None if the user is known to have no events; else the generation to pass to `remember` after
        querying the database."""
        self._sync()
        with self._lock:
            if user in self._users:
                self._users.move_to_end(user)
                return None
            return self._generation

    def remember(self, user: str, generation: int) -> None:
        """The user had no events when queried; unless users were forgotten since, remember it."""
        with self._lock:
            if generation == self._generation:
                self._users[user] = None
                if len(self._users) > self.size:
                    self._users.popitem(last=False)

    def forget(self, users: Iterable[str]) -> None:
        with self._lock:
            self._generation += 1
            for user in users:
                self._users.pop(user, None)

    def _sync(self) -> None:
        """Forget the users named by events committed since the last look. A connection cannot tell what
        was committed before it opened: a new process starts from an empty memory and the newest event id,
        a new thread's connection catches up from the last id read."""
        local, pid = self._local, os.getpid()
        connection = self.readers.get()
        if getattr(local, "connection", None) is not connection:  # a new thread, or a new process after fork
            local.connection, local.version = connection, None
        # read the version first: a commit landing after it changes the version again, so it is never missed
        version = connection.execute("PRAGMA data_version").fetchall()[0][0]
        if version == local.version:
            return
        with self._lock:  # rare: something was committed, or this is the connection's first look
            if self._pid != pid:
                self._users.clear()
                self._last_id = connection.execute("SELECT max(id) FROM feedback_events").fetchall()[0][0] or 0
                self._pid = pid
            rows = connection.execute("SELECT user_id, max(id) FROM feedback_events WHERE id > ? GROUP BY user_id",
                                      (self._last_id,)).fetchall()
            self._generation += 1
            for user, last in rows:
                self._users.pop(user, None)
                self._last_id = max(self._last_id, last)
        local.version = version


def _create_schema(engine: sa.Engine) -> None:
    """Create the table if missing. Instances starting together on an empty PostgreSQL database would race
    (both see no table, one CREATE fails on the catalogue's unique index), so there it runs under an advisory
    lock; SQLite serialises the writers itself."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        metadata.create_all(conn)
        # a database made before events could name the answer they respond to gains that column
        if "request_id" not in {c["name"] for c in sa.inspect(conn).get_columns("feedback_events")}:
            conn.execute(sa.text("ALTER TABLE feedback_events ADD COLUMN request_id VARCHAR(64)"))


SCHEMA_LOCK = 0x72656373  # 'recs': the advisory lock key that serialises schema creation (PostgreSQL)


def _is_sqlite_file(engine: sa.Engine) -> bool:
    """A SQLite database in a plain file (not in memory, not a URI filename or with URL options)."""
    database = engine.url.database
    return engine.dialect.name == "sqlite" and bool(database) and database != ":memory:" and \
        not database.startswith("file:") and not engine.url.query


def _sqlite_durable(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a committed event is on disk
    cursor.close()
