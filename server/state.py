"""The model the service answers with: an Engine loaded from a verified bundle, and its response cache; and the
accessors of what an app holds (`get_state`, `get_feedback`)."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask, current_app

from recsys.additions import NewItem, add_items
from recsys.bundle import Manifest, resolve
from recsys.engine import Engine, load_engine
from recsys.exceptions import RecsysError
from recsys.feedback import FeedbackStore

from .cache import ResponseCache

log = logging.getLogger("recsys")
STATE, FEEDBACK = "recsys_state", "recsys_feedback"  # keys in app.extensions (set by create_app)
STATE_B = "recsys_state_b"  # the second bundle of an A/B test (RECSYS_BUNDLE_B), when one is configured


def get_state(app: Flask | None = None) -> ModelState:
    """The app's ModelState (the current app's by default)."""
    return (app or current_app).extensions[STATE]


def get_states(app: Flask | None = None) -> list[ModelState]:
    """Every ModelState the app serves: A, and B during an A/B test."""
    extensions = (app or current_app).extensions
    return [extensions[STATE], *([extensions[STATE_B]] if STATE_B in extensions else [])]


def variant_of(user: str, share: float, salt: str) -> str:
    """'B' for a `share` of users, 'A' for the rest: the same user always gets the same variant (a hash of the
    salt and the id, so another salt draws another split)."""
    digest = hashlib.sha256(f"{salt}:{user}".encode()).digest()
    return "B" if int.from_bytes(digest[:8], "big") / 2 ** 64 < share else "A"


def get_feedback(app: Flask | None = None) -> FeedbackStore:
    """The app's feedback store (the current app's by default)."""
    return (app or current_app).extensions[FEEDBACK]


@dataclass(frozen=True)
class Loaded:
    engine: Engine
    manifest: Manifest
    path: Path
    # answers that depend on nothing but this model and the request (users without stored feedback)
    responses: ResponseCache = field(default_factory=lambda: ResponseCache(0))
    bundle_engine: Engine | None = None  # the bundle's own engine, when `engine` also holds added items
    added: int = 0  # the newest added item (`FeedbackStore.last_added`) that `engine` holds
    variant: str | None = None  # 'A' or 'B' during an A/B test: every answer of this model names it

    @property
    def version(self) -> str:
        return self.path.name


class ModelState:
    """Holds the current `Loaded` model. Requests read `current` once and use that object throughout, so a
    swap never changes the model under a request in flight."""

    def __init__(self, bundle: str | None, mode: str = "auto", cache_bytes: int = 0, variant: str | None = None):
        self.bundle = bundle
        self.variant = variant
        self.mode = mode
        self.cache_bytes = cache_bytes  # per loaded model: the response cache's budget
        self.current: Loaded | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._polled = 0.0  # when `with_additions` last asked the database
        if bundle:
            try:
                self.load()
            except (RecsysError, OSError, ValueError) as e:  # the service starts; /readyz says why not ready
                self.error = str(e)
                log.error("Could not load bundle %s: %s", bundle, e)

    def load(self) -> Loaded:
        """Load the bundle the configured path (or its `current` pointer) names, verify every checksum, then
        swap it in with one assignment. On any error the model being served stays as it was."""
        with self._lock:
            path = resolve(self.bundle)
            engine, bundle = load_engine(path, mode=self.mode)
            engine.prepare_serving()  # here, before gunicorn forks the workers, which then share what it builds
            if self.mode == "auto" and engine.retriever.indexes:  # index or exact: decided by figures taken here
                for metric, stats in engine.calibrate().items():
                    log.info("%s search measured here: index %.3f ms, exact %.3f ms per query", metric,
                             stats["ann_ms"], stats["exact_ms"])
            loaded = Loaded(engine, bundle.manifest, bundle.path, ResponseCache(self.cache_bytes), variant=self.variant)
            self.current, self.error = loaded, None  # requests in flight keep the object they already read
            log.info("Serving bundle %s", path)
            return loaded

    def with_additions(self, store: FeedbackStore, wait: float = 1.0) -> Loaded | None:
        """The current model with every item added through the feedback database (`recsys.additions`), asking
        the database at most once per `wait` seconds (0: now). Every worker and instance computes the same
        vectors from the same rows, so a new item is served everywhere within about `wait` seconds."""
        loaded = self.current
        now = time.monotonic()
        if loaded is None or now - self._polled < wait:
            return loaded
        self._polled = now
        last = store.last_added()
        if last == loaded.added:
            return loaded
        base = loaded.bundle_engine or loaded.engine
        new = [NewItem(i, a, p) for i, a, p in store.added() if i not in base.items]  # (a retrained bundle's own)
        try:
            engine = add_items(base, new) if new else base
            engine.prepare_serving()
            extended = Loaded(engine, loaded.manifest, loaded.path, ResponseCache(self.cache_bytes), base, last,
                              self.variant)
        except RecsysError as e:  # e.g. a reloaded bundle without the catalogue columns an item was placed by
            log.error("Added items not served (until the next addition or reload): %s", e)
            extended = dataclasses.replace(loaded, added=last)
        with self._lock:
            if self.current is loaded:  # (a reload in between wins)
                self.current = extended
        return self.current
