"""What the service served, recorded without slowing the answer.

Every recommendations answer gets a request id (the client's `X-Request-Id` when it sends one, else a new one),
returned in the `X-Request-Id` header; feedback events may name it (`request_id`). A share `RECORD_RATE` of the
answers (0 turns recording off) is handed to a `Recorder` as the response body's bytes: the request thread only
draws a random number and puts a tuple on a bounded queue (dropping it when the queue is full, counted in
`recsys_served_dropped_total`). A background thread per worker reads the queue every `flush_seconds`, parses the
bodies and stores them in the feedback database in one transaction (`FeedbackStore.add_served`), where `recsys
report` reads them. gunicorn forks workers after the app is made, so the thread starts in each worker on its
first answer.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
import uuid

from flask import Flask, Response, request
from prometheus_client import Counter

from recsys.feedback import FeedbackStore, Served

log = logging.getLogger("recsys")

DROPPED = Counter("recsys_served_dropped_total", "Served answers not recorded because the recording queue was full")
RECORDED = Counter("recsys_served_recorded_total", "Served answers recorded in the feedback database")
REQUEST_ID = "X-Request-Id"
RECORDED_ENDPOINTS = {"v1.recommend"}  # the per-user recommendations answer
RECORDER = "recsys.recorder"  # app.extensions key


class Recorder:
    """A bounded queue of served answers and the thread that stores them (started on first use, per process)."""

    def __init__(self, store: FeedbackStore, rate: float, flush_seconds: float = 1.0, max_queue: int = 10_000):
        self.store, self.rate, self.flush_seconds = store, float(rate), float(flush_seconds)
        self.queue: queue.Queue = queue.Queue(max_queue)
        self._pid = 0
        self._lock = threading.Lock()

    def offer(self, request_id: str, user: str, body: bytes) -> None:
        """Record this answer with probability `rate`; never blocks."""
        if self.rate <= 0 or (self.rate < 1 and random.random() >= self.rate):
            return
        self._ensure_thread()
        try:
            self.queue.put_nowait((request_id, user, body, time.time()))
        except queue.Full:
            DROPPED.inc()

    def flush(self) -> int:
        """Store what the queue holds now (the thread calls this; tests may too); returns how many."""
        batch = []
        while True:
            try:
                request_id, user, body, ts = self.queue.get_nowait()
            except queue.Empty:
                break
            try:
                doc = json.loads(body)
                batch.append(Served(request_id, user, doc["model_version"],
                                    tuple(i["id"] for i in doc["items"]), bool(doc["fallback"]), ts,
                                    doc.get("variant")))
            except (ValueError, KeyError, TypeError):
                log.warning("A served answer could not be read for recording (request %s).", request_id)
        if batch:
            self.store.add_served(batch)
            RECORDED.inc(len(batch))
        return len(batch)

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                threading.Thread(target=self._run, name="recsys-recorder", daemon=True).start()
                self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            time.sleep(self.flush_seconds)
            try:
                self.flush()
            except Exception:  # a database hiccup loses one batch, never the worker
                log.exception("Recording served answers failed; this batch is lost.")


def register(app: Flask, recorder: Recorder) -> None:
    """Give every recommendations answer a request id and offer it to `recorder`."""

    @app.after_request
    def _served(response: Response) -> Response:
        if request.endpoint in RECORDED_ENDPOINTS and response.status_code == 200:
            request_id = request.headers.get(REQUEST_ID) or uuid.uuid4().hex
            response.headers[REQUEST_ID] = request_id[:64]
            recorder.offer(request_id[:64], request.view_args["user_id"], response.get_data())
        return response
