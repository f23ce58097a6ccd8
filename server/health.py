"""Liveness and readiness (not part of the versioned API)."""
from __future__ import annotations

from flask import Blueprint, abort, jsonify, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from .errors import problem
from .state import get_states

bp = Blueprint("health", __name__)


@bp.get("/livez")
def livez():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    states = get_states()
    for state in states:
        if state.current is None:
            return problem(503, "Not ready", state.error or "No bundle configured: set RECSYS_BUNDLE.")
    return jsonify(status="ready", model_version=states[0].current.version,
                   **({"model_version_b": states[1].current.version} if len(states) > 1 else {}))


# The documentation page's assets, served by the app (works offline). A fixed list: no path from the request
# reaches the filesystem.
DOC_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                        "favicon-32x32.png", "favicon-16x16.png"})


@bp.get("/docs/assets/<name>")
def doc_asset(name: str):
    if name not in DOC_ASSETS:
        abort(404)
    return send_from_directory(swagger_ui_path, name, max_age=86400)
