"""The model the service answers with: an Engine loaded from a verified bundle, plus popularity fallback."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys import artifacts
from recsys.exceptions import RecsysError
from recsys.runtime import Engine, load_engine

log = logging.getLogger("recsys")


@dataclass(frozen=True)
class Loaded:
    engine: Engine
    manifest: dict
    path: Path
    popular: np.ndarray  # item indices, most interacted first
    counts: np.ndarray   # users who interacted with each item

    @property
    def version(self) -> str:
        return self.path.name


class ModelState:
    """Holds the current `Loaded` model. Requests read `current` once and use that object throughout, so a
    swap never changes the model under a request in flight."""

    def __init__(self, bundle: str | None, mode: str = "auto"):
        self.bundle = bundle
        self.mode = mode
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
                            counts.astype(np.float32))
            self.current, self.error = loaded, None  # requests in flight keep the object they already read
            log.info("Serving bundle %s", path)
            return loaded
