"""The response cache: serialised answers by request key, bounded in bytes (one per loaded model)."""
from __future__ import annotations

import threading
from collections import OrderedDict


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
