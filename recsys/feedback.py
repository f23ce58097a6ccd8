"""Feedback events in a real database (SQLite by default; any SQLAlchemy URL, e.g. PostgreSQL).

An event is stored and committed before `add` returns, so an acknowledged write survives a crash. An optional
`event_id` makes writes idempotent: replaying the same id stores it once.
"""
from __future__ import annotations

import datetime as dt
import logging
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
    """Append-only event log. `url` is a SQLAlchemy database URL (default: a SQLite file)."""

    def __init__(self, url: str = "sqlite:///feedback.db"):
        self.url = url
        connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_durable)
        metadata.create_all(self.engine)
        self._history_sql = sa.text("SELECT item_id, weight FROM feedback_events WHERE user_id = :user "
                                    "ORDER BY ts, id")

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
        return stored, len(rows) - stored

    def history(self, user: str) -> list[tuple[str, float]]:
        """(item, weight) of a user's events, oldest first."""
        with self.engine.connect() as conn:  # a fixed statement: this runs on every recommendation request
            rows = conn.execute(self._history_sql, {"user": user}).all()
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


def _sqlite_durable(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a committed event is on disk
    cursor.close()
