"""Prometheus metrics: request counts and latency per endpoint, and the model version being served.

Under gunicorn, PROMETHEUS_MULTIPROC_DIR (set by gunicorn.conf.py before the app is imported) makes every
worker write to shared files, and /metrics aggregates them: the figures are correct whichever worker answers.
"""
from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from .state import get_states

REQUESTS = Counter("recsys_requests_total", "HTTP requests", ["endpoint", "method", "status"])
LATENCY = Histogram("recsys_request_seconds", "Request latency", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
# recommendation answers by what the response cache did: hit, miss (computed, then kept), bypass (a user with
# stored feedback: always computed)
CACHE = Counter("recsys_response_cache_total", "Recommendation answers by response-cache outcome", ["result"])
CACHE_RESULTS = {result: CACHE.labels(result) for result in ("hit", "miss", "bypass")}
# recommendation answers by what answered: the model, the popularity fallback (an unknown user), or a fold-in of
# the user's stored feedback; computed answers that filters left with fewer than k items; stored feedback events
ANSWERS = Counter("recsys_answers_total", "Recommendation answers by kind", ["kind"])
ANSWER_KINDS = {kind: ANSWERS.labels(kind) for kind in ("model", "fallback", "fold-in")}
FILTER_EMPTIED = Counter("recsys_filter_emptied_total", "Computed recommendation answers that filters left short of k")
FEEDBACK_EVENTS = Counter("recsys_feedback_events_total", "Feedback events stored (rate() gives events per minute)")
MODEL = Gauge("recsys_model_info", "The model version being served (value 1)", ["version"],
              multiprocess_mode="livemax")


def register(app: Flask) -> None:
    # the labelled children, looked up once per label set (labels() validates and locks on every call)
    counters: dict[tuple[str, str, int], Any] = {}
    histograms: dict[str, Any] = {}

    @app.before_request
    def _start() -> None:
        g.recsys_start = time.perf_counter()

    @app.after_request
    def _record(response):
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else "unmatched"
        if endpoint != "/metrics":
            key = (endpoint, request.method, response.status_code)
            counter = counters.get(key)
            if counter is None:
                counter = counters.setdefault(key, REQUESTS.labels(endpoint, key[1], str(key[2])))
            histogram = histograms.get(endpoint)
            if histogram is None:
                histogram = histograms.setdefault(endpoint, LATENCY.labels(endpoint))
            counter.inc()
            histogram.observe(time.perf_counter() - g.get("recsys_start", time.perf_counter()))
        return response

    @app.get("/metrics")
    def metrics():
        for state in get_states(app):  # (both variants during an A/B test)
            if state.current is not None:
                MODEL.labels(state.current.version).set(1)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
