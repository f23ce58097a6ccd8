"""The model the service answers with: an Engine loaded from a verified bundle, plus popularity fallback."""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recsys import artifacts
from recsys.exceptions import RecsysError
from recsys.runtime import Engine, load_engine

log = logging.getLogger("recsys")


class ResponseCache:
    """A bounded map of request key -> response body, least recently used out first; thread-safe. One
    belongs to each loaded model, so a reload starts empty and the old one goes with the old model."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            body = self._data.get(key)
            if body is None:
                self.misses += 1
            else:
                self._data.move_to_end(key)
                self.hits += 1
            return body

    def put(self, key: tuple, body: bytes) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = body
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class Loaded:
    engine: Engine
    manifest: dict
    path: Path
    popular: np.ndarray  # item indices, most interacted first
    counts: np.ndarray   # users who interacted with each item
    # answers that depend on nothing but this model and the request (users without stored feedback)
    responses: ResponseCache = field(default_factory=lambda: ResponseCache(0))

    @property
    def version(self) -> str:
        return self.path.name


class ModelState:
    """Holds the current `Loaded` model. Requests read `current` once and use that object throughout, so a
    swap never changes the model under a request in flight."""

    def __init__(self, bundle: str | None, mode: str = "auto", cache_size: int = 0):
        self.bundle = bundle
        self.mode = mode
        self.cache_size = cache_size
        self.current: Loaded | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
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
            path = artifacts.resolve(self.bundle)
            engine, bundle = load_engine(path, mode=self.mode)
            counts = np.asarray(engine.seen.astype(bool).sum(axis=0)).ravel()
            loaded = Loaded(engine, bundle.manifest, bundle.path, np.argsort(-counts, kind="stable"),
                            counts.astype(np.float32), ResponseCache(self.cache_size))
            self.current, self.error = loaded, None  # requests in flight keep the object they already read
            log.info("Serving bundle %s", path)
            return loaded
