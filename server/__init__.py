"""The recsys REST service: HTTP in, a call into `recsys.engine`, JSON out.

    create_app({"BUNDLE": "models"})     # a bundle directory, or a models root with a `current` pointer

Configuration: defaults, then environment variables prefixed RECSYS_ (e.g. RECSYS_BUNDLE=models,
RECSYS_MAX_K=500), then the mapping given to `create_app`. Never imports torch or recsys.models.
"""
from __future__ import annotations

import http
import logging
from pathlib import Path
from typing import Any

from flask import Flask
from flask_smorest import Api
from flask_smorest.utils import prepare_response

from recsys.feedback import FeedbackStore

from .schemas import LIMITS
from .state import FEEDBACK, STATE, STATE_B, ModelState

DEFAULTS: dict[str, Any] = {
    "BUNDLE": None,                   # bundle dir or models root; the service is not ready without one
    "BUNDLE_B": None,                 # a second bundle: an A/B test of the per-user recommendations
    "AB_SHARE": 0.5,                  # the share of users answered by BUNDLE_B
    "AB_SALT": "recsys",              # another salt draws another split of the users
    "SEARCH_MODE": "auto",            # auto | exact | ann
    **LIMITS,                         # MAX_K, MAX_BATCH_USERS, MAX_HISTORY_ITEMS, MAX_FEEDBACK_EVENTS
    "MAX_CONTENT_LENGTH": 1 << 20,    # bytes of request body
    "RESPONSE_CACHE_BYTES": 32 << 20,  # per worker: cached recommendation answers (users without feedback)
    "NO_FEEDBACK_CACHE_SIZE": 100_000,  # per worker: users known to have no stored events (SQLite only)
    "FEEDBACK_DB_URL": None,          # SQLAlchemy URL; default sqlite:///<instance folder>/feedback.db
    "ADDITIONS_POLL_SECONDS": 1.0,    # per worker: how often to ask the database for items added (POST /v1/items)
    "RECORD_RATE": 0.1,               # share of recommendation answers stored in the database (0: none)
    "RECORD_FLUSH_SECONDS": 1.0,      # per worker: how often recorded answers are written, in one transaction
    "API_KEYS": [],                   # list, or comma-separated in RECSYS_API_KEYS; needed for writes/admin
    "READ_REQUIRES_KEY": False,
    "API_TITLE": "recsys",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "/docs",
    "OPENAPI_SWAGGER_UI_URL": "/docs/assets/",  # served by the app itself: works offline
}


class ProblemApi(Api):
    """flask-smorest, with every documented error response as RFC 9457 application/problem+json."""

    def _register_responses(self) -> None:
        from .schemas import Problem

        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if status >= 400:
                response["schema"] = Problem
            prepare_response(response, self.spec, "application/problem+json" if status >= 400 else
                             self.DEFAULT_RESPONSE_CONTENT_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Error (RFC 9457 problem details)", "schema": Problem}
        prepare_response(response, self.spec, "application/problem+json")
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("RECSYS")
    if config:
        app.config.from_mapping(config)
    logging.getLogger("recsys").setLevel(logging.INFO)

    from . import api, errors, health, metrics, recording

    ab = bool(app.config["BUNDLE_B"])
    for key, bundle, variant in ((STATE, app.config["BUNDLE"], "A"), (STATE_B, app.config["BUNDLE_B"], "B")):
        if key == STATE or ab:
            app.extensions[key] = ModelState(bundle, mode=app.config["SEARCH_MODE"],
                                             cache_bytes=int(app.config["RESPONSE_CACHE_BYTES"]),
                                             variant=variant if ab else None)
    url = app.config["FEEDBACK_DB_URL"]
    if not url:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(app.instance_path) / 'feedback.db'}"
    app.extensions[FEEDBACK] = FeedbackStore(url, no_history_cache=int(app.config["NO_FEEDBACK_CACHE_SIZE"]))
    smorest = ProblemApi(app)
    smorest.spec.components.security_scheme("ApiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    errors.register(app)
    with app.app_context():  # the spec reads this app's limits (schemas.LIMITS) as the views are registered
        smorest.register_blueprint(api.blp)
    app.register_blueprint(health.bp)
    metrics.register(app)
    app.extensions[recording.RECORDER] = recorder = recording.Recorder(
        app.extensions[FEEDBACK], float(app.config["RECORD_RATE"]), float(app.config["RECORD_FLUSH_SECONDS"]))
    recording.register(app, recorder)
    return app
