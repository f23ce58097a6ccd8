"""Prometheus metrics: request counts and latency per endpoint, and the model version being served.

Under gunicorn, PROMETHEUS_MULTIPROC_DIR (set by gunicorn.conf.py before the app is imported) makes every
worker write to shared files, and /metrics aggregates them: the figures are correct whichever worker answers.
"""
from __future__ import annotations

import os
import time

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

REQUESTS = Counter("recsys_requests_total", "HTTP requests", ["endpoint", "method", "status"])
LATENCY = Histogram("recsys_request_seconds", "Request latency", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
MODEL = Gauge("recsys_model_info", "The model version being served (value 1)", ["version"],
              multiprocess_mode="livemax")


def register(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.recsys_start = time.perf_counter()

    @app.after_request
    def _record(response):
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        if endpoint != "/metrics":
            REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
            LATENCY.labels(endpoint).observe(time.perf_counter() - g.get("recsys_start", time.perf_counter()))
        return response

    @app.get("/metrics")
    def metrics():
        state = app.extensions["recsys_state"]
        if state.current is not None:
            MODEL.labels(state.current.version).set(1)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
