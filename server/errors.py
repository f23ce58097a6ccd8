"""Every 4xx/5xx is RFC 9457 application/problem+json."""
from __future__ import annotations

import logging

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

from recsys.exceptions import DataValidationError, UnknownIdError

log = logging.getLogger("recsys")
PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return Response(json.dumps(body), status=status, mimetype=PROBLEM)


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        extra = {}
        data = getattr(e, "data", None) or {}
        messages = data.get("messages")
        if messages:  # webargs / marshmallow validation: name the fields
            extra["errors"] = messages
        detail = data.get("message") or e.description or e.name
        if messages:
            detail = "Invalid request: " + "; ".join(_flatten(messages))
        response = problem(e.code or 500, e.name, detail, **extra)
        for key, value in [*e.get_headers(), *(data.get("headers") or {}).items()]:
            if key.lower() != "content-type":  # e.g. Allow on 405, WWW-Authenticate on 401
                response.headers[key] = value
        return response

    @app.errorhandler(UnknownIdError)
    def unknown_id(e: UnknownIdError):
        return problem(404, "Not Found", str(e))

    @app.errorhandler(DataValidationError)
    def bad_value(e: DataValidationError):
        return problem(422, "Unprocessable Content", str(e))

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        log.exception("Unhandled error")
        return problem(500, "Internal Server Error", "The server failed to answer; the error was logged.")


def _flatten(messages, prefix: str = "") -> list[str]:
    out = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            out += _flatten(value, f"{prefix}{key}." if not isinstance(value, list) else f"{prefix}{key}")
    elif isinstance(messages, list):
        out.append(f"{prefix.rstrip('.')}: {' '.join(str(m) for m in messages)}")
    else:
        out.append(f"{prefix.rstrip('.')}: {messages}")
    return out
