"""API keys: required for writes and admin, optionally for reads. Constant-time comparison."""
from __future__ import annotations

import hmac

from flask import current_app, request
from flask_smorest import abort


def configured_keys() -> list[str]:
    keys = current_app.config.get("API_KEYS") or []
    if isinstance(keys, str):
        keys = [k.strip() for k in keys.split(",")]
    return [k for k in keys if k]


def presented_key() -> str | None:
    key = request.headers.get("X-API-Key")
    auth = request.headers.get("Authorization", "")
    if key is None and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return key or None


def require_key() -> None:
    """401 without a key (or when none is configured), 403 with a wrong one."""
    keys = configured_keys()
    key = presented_key()
    if not keys:
        abort(401, message="This endpoint needs an API key and none is configured: set RECSYS_API_KEYS.",
              headers={"WWW-Authenticate": "ApiKey"})
    if key is None:
        abort(401, message="Missing API key: send it in the X-API-Key header (or Authorization: Bearer).",
              headers={"WWW-Authenticate": "ApiKey"})
    # compare against every key, whatever matches first, so timing does not reveal which key is close
    matches = [hmac.compare_digest(key.encode(), k.encode()) for k in keys]
    if not any(matches):
        abort(403, message="The API key is not valid.")
