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
    """Response bodies by request key, bounded by their total size in bytes (least recently used out first);
    thread-safe. One belongs to each loaded model, so a reload starts empty and the old one goes with the
    old model."""

    ENTRY_OVERHEAD = 200  # bytes counted per entry besides its body: the key tuple and the dict slot

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
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
        size = len(body) + self.ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= len(old) + self.ENTRY_OVERHEAD
            self._data[key] = body
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, dropped = self._data.popitem(last=False)
                self.bytes -= len(dropped) + self.ENTRY_OVERHEAD

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

    def __init__(self, bundle: str | None, mode: str = "auto", cache_bytes: int = 0):
        self.bundle = bundle
        self.mode = mode
        self.cache_bytes = cache_bytes  # per loaded model: the response cache's budget
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
                            counts.astype(np.float32), ResponseCache(self.cache_bytes))
            self.current, self.error = loaded, None  # requests in flight keep the object they already read
            log.info("Serving bundle %s", path)
            return loaded
