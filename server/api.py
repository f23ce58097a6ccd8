"""Versioned endpoints (/v1): parse and validate, call the runtime, format."""
from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable

import numpy as np
from flask import Response, current_app, request
from flask_smorest import Blueprint, abort
from marshmallow import fields
from werkzeug.datastructures import MultiDict

from recsys.exceptions import RecsysError
from recsys.feedback import Event

from . import schemas as s
from .auth import require_key
from .state import Loaded

blp = Blueprint("v1", __name__, url_prefix="/v1", description="Recommendations, similar items and users")


@blp.before_request
def _read_auth() -> None:
    if current_app.config["READ_REQUIRES_KEY"] and request.method == "GET":
        require_key()


def _model() -> Loaded:
    loaded = current_app.extensions["recsys_state"].current
    if loaded is None:
        abort(503, message="No model loaded: the service is not ready (see /readyz).")
    return loaded


def _items(m: Loaded, idx: np.ndarray, scores: np.ndarray) -> list[dict]:
    valid = idx >= 0
    idx, scores = idx[valid], scores[valid]
    ids = m.engine.items.ids[idx]
    titles = m.engine.titles(ids)
    return [{"id": str(i), "score": float(sc), "title": None if titles is None else titles[n]}
            for n, (i, sc) in enumerate(zip(ids, scores))]


def _check_limit(n: int, key: str, what: str) -> None:
    limit = current_app.config[key]
    if n > limit:
        abort(422, message=f"At most {limit} {what} per request (got {n}).")


def _filters(genres: list[str]) -> dict | None:
    return {"genres": genres} if genres else None


def _popular(m: Loaded, k: int, genres: list[str], exclude: np.ndarray | None = None) -> list[dict]:
    order = m.popular
    if genres:
        order = order[m.engine.attribute_mask(_filters(genres))[order]]
    if exclude is not None and len(exclude):
        order = order[~np.isin(order, exclude)]
    top = order[:k]
    return _items(m, top, m.counts[top])


def _recommend(m: Loaded, user: str, k: int, offset: int = 0, exclude: list[str] | None = None,
               genres: list[str] | None = None, include_seen: bool = False,
               history: list[tuple[str, float]] | None = None) -> dict:
    """One user's answer. history: the user's stored feedback events (default: read from the store)."""
    _check_k_offset(k, offset)
    e = m.engine
    deny = e.items.to_index(exclude or [], missing="ignore")
    deny = deny[deny >= 0]
    if history is None:
        history = current_app.extensions["recsys_feedback"].history(user)
    if history:  # live feedback: fold the whole history in with the current model, no retraining
        return _recommend_from_history(m, user, history, k, offset, deny, genres or [], include_seen)
    if user not in e.users:
        items = _popular(m, k + offset, genres or [], deny)[offset:]
        return {"user": user, "items": items, "fallback": True, "model_version": m.version}
    idx, scores = e.recommend_indices(np.array([e.users.index(user, "user")]), k + offset,
                                      exclude_seen=not include_seen, deny=deny,
                                      allow=e.allowed_items(None, _filters(genres or [])))
    items = _items(m, idx[0], scores[0])[offset:]
    return {"user": user, "items": items, "fallback": False, "model_version": m.version}


def _check_k_offset(k: int, offset: int) -> None:
    limit = current_app.config["MAX_K"]
    if k + offset > limit:
        abort(422, message=f"k + offset must be <= {limit}. Got {k + offset}.")


RECOMMENDATIONS = s.Recommendations()


def _recommend_response(m: Loaded, user: str, k: int, offset: int = 0, exclude: list[str] | None = None,
                        genres: list[str] | None = None, include_seen: bool = False) -> Response:
    """`_recommend` as a JSON response. An answer for a user without stored feedback depends on nothing but
    the loaded model and the request, so its serialised body is kept in the model's response cache (a user's
    first event sends their next request down the fold-in path, uncached). k + offset is checked by
    `_recommend` before anything is computed or cached."""
    history = current_app.extensions["recsys_feedback"].history(user)
    key = None if history else (user, k, offset, tuple(exclude or ()), tuple(genres or ()), include_seen)
    body = None if key is None else m.responses.get(key)
    if body is None:
        answer = _recommend(m, user, k, offset, exclude, genres, include_seen, history=history)
        body = (current_app.json.dumps(RECOMMENDATIONS.dump(answer)) + "\n").encode()
        if key is not None:
            m.responses.put(key, body)
    return current_app.response_class(body, mimetype="application/json")


def _recommend_from_history(m: Loaded, user: str, history: list[tuple[str, float]], k: int, offset: int,
                            deny: np.ndarray, genres: list[str], include_seen: bool) -> dict:
    e = m.engine
    items = e.items.to_index([i for i, _ in history], missing="ignore")
    weights = np.asarray([w for _, w in history], np.float32)[items >= 0]
    items = items[items >= 0]
    if user in e.users:  # what the bundle already knows about this user counts too
        known = e.seen[e.users.index(user, "user")].indices
        items = np.concatenate([known, items])
        weights = np.concatenate([np.ones(len(known), np.float32), weights])
    positive = weights > 0
    hide = deny if include_seen else np.concatenate([deny, items])
    idx, scores = e.history_indices(items[positive], k + offset, weights[positive], hide=hide,
                                    allow=e.allowed_items(None, _filters(genres)))
    return {"user": user, "items": _items(m, idx, scores)[offset:], "fallback": False, "model_version": m.version}


@blp.route("/feedback", methods=["POST"])
@blp.arguments(s.FeedbackRequest())
@blp.response(201, s.FeedbackResponse)
@blp.doc(security=[{"ApiKey": []}])
def feedback(body):
    """Store interaction events (committed before the 201); they change the user's recommendations at once."""
    require_key()
    _check_limit(len(body["events"]), "MAX_FEEDBACK_EVENTS", "events")
    stored, duplicates = current_app.extensions["recsys_feedback"].add(
        Event(e["user"], e["item"], e["weight"], e["type"], e["timestamp"], e["event_id"]) for e in body["events"])
    return {"stored": stored, "duplicates": duplicates}


@blp.route("/admin/reload", methods=["POST"])
@blp.response(200, s.ReloadResponse)
@blp.doc(security=[{"ApiKey": []}])
def reload():
    """Load the bundle `current` points at (checksums verified) and swap it in; a corrupt one is refused
    and the old model keeps serving. Under gunicorn, every worker is then replaced gracefully (SIGHUP)."""
    require_key()
    state = current_app.extensions["recsys_state"]
    previous = state.current.version if state.current else None
    try:
        loaded = state.load()
    except (RecsysError, OSError, ValueError) as e:
        abort(409, message=f"Refused to reload: {e} Still serving {previous}.")
    master = os.environ.get("RECSYS_MASTER_PID")
    if master:
        os.kill(int(master), signal.SIGHUP)  # gunicorn reloads the app in the master, then new workers
    return {"version": loaded.version, "previous": previous, "workers_restarting": bool(master)}


@blp.route("/users/<string:user_id>/recommendations")
@blp.arguments(s.RecommendQuery(), location="query")
@blp.response(200, s.Recommendations)
def recommend(args, user_id):
    """Top-k items for a user (popularity when the user is unknown: `fallback` is true)."""
    return _recommend_response(_model(), user_id, args["k"], args["offset"], args["exclude"], args["genre"],
                               args["include_seen"])


def install_fast_path(app) -> None:
    """Let the recommendations view read a plain query string (k, offset, include_seen, each at most once,
    k and offset in digits) without webargs: measured at about a third of the handler's CPU once answers
    are cached. Anything else (exclude, genre, unknown or repeated keys, values webargs would reject or
    coerce) goes through the decorated view, which validates, reports errors and documents the endpoint."""
    app.view_functions["v1.recommend"] = _with_fast_query(app.view_functions["v1.recommend"])


def _with_fast_query(full_view: Callable) -> Callable:
    @functools.wraps(full_view)
    def view(user_id: str):
        plain = _plain_query(request.args)
        if plain is None:
            return full_view(user_id=user_id)
        k, offset, include_seen = plain
        return _recommend_response(_model(), user_id, k, offset, include_seen=include_seen)
    return view


_K_FIELD, _OFFSET_FIELD = s.RecommendQuery().fields["k"], s.RecommendQuery().fields["offset"]


def _plain_query(args: MultiDict) -> tuple[int, int, bool] | None:
    """(k, offset, include_seen) when the query string is plainly valid, with the schema's defaults; else
    None. Same answers as RecommendQuery for the strings it accepts: digits parse as int() does, booleans
    use marshmallow's own truthy/falsy spellings, ranges come from the schema's own validators."""
    k, offset, include_seen = _K_FIELD.load_default, _OFFSET_FIELD.load_default, False
    for key, values in args.lists():
        if len(values) != 1:
            return None
        value = values[0]
        if key == "k" or key == "offset":
            if not (value.isascii() and value.isdigit() and len(value) <= 6):
                return None
            number = int(value)
            field = _K_FIELD if key == "k" else _OFFSET_FIELD
            if not all(_in_range(v, number) for v in field.validators):
                return None
            k, offset = (number, offset) if key == "k" else (k, number)
        elif key == "include_seen" and value in fields.Boolean.truthy:
            include_seen = True
        elif key == "include_seen" and value in fields.Boolean.falsy:
            include_seen = False
        else:
            return None
    return k, offset, include_seen


def _in_range(validator, number: int) -> bool:
    try:
        validator(number)
    except Exception:  # noqa: BLE001 - marshmallow.ValidationError, or anything a validator raises
        return False
    return True


@blp.route("/recommendations/batch", methods=["POST"])
@blp.arguments(s.BatchRequest())
@blp.response(200, s.BatchResponse)
def recommend_batch(body):
    """Top-k for many users in one call."""
    m = _model()
    _check_limit(len(body["users"]), "MAX_BATCH_USERS", "users")
    return {"results": [_recommend(m, u, body["k"]) for u in body["users"]]}


@blp.route("/sessions/recommendations", methods=["POST"])
@blp.arguments(s.SessionRequest())
@blp.response(200, s.ItemList)
def recommend_session(body):
    """Top-k for an anonymous session from the item ids it touched (fold-in, no retraining)."""
    m = _model()
    _check_limit(len(body["items"]), "MAX_HISTORY_ITEMS", "history items")
    history = m.engine.items.to_index(body["items"], missing="ignore")
    history = history[history >= 0]
    if not len(history):
        return {"items": _popular(m, body["k"], []), "fallback": True, "model_version": m.version}
    idx, scores = m.engine.history_indices(history, body["k"], hide=history)
    return {"items": _items(m, idx, scores), "fallback": False, "model_version": m.version}


@blp.route("/items/<string:item_id>/similar")
@blp.arguments(s.KQuery(), location="query")
@blp.response(200, s.SimilarItems)
def similar_items(args, item_id):
    """The items nearest to an item."""
    m = _model()
    idx, scores = m.engine.similar_item_indices(m.engine.items.to_index([item_id], kind="item"), args["k"])
    return {"item": item_id, "items": _items(m, idx[0], scores[0]), "model_version": m.version}


@blp.route("/users/<string:user_id>/similar")
@blp.arguments(s.KQuery(), location="query")
@blp.response(200, s.SimilarUsers)
def similar_users(args, user_id):
    """The users nearest to a user."""
    m = _model()
    ids, scores = m.engine.similar_users([user_id], args["k"])
    users = [{"id": str(u), "score": float(sc)} for u, sc in zip(ids[0], scores[0]) if u is not None]
    return {"user": user_id, "users": users, "model_version": m.version}


@blp.route("/items/popular")
@blp.arguments(s.PopularQuery(), location="query")
@blp.response(200, s.ItemList)
def popular(args):
    """The most interacted items (optionally of some genres); scores are interaction counts."""
    m = _model()
    return {"items": _popular(m, args["k"], args["genre"]), "fallback": False, "model_version": m.version}


@blp.route("/items/<string:item_id>")
@blp.response(200, s.Item)
def item(item_id):
    """Item metadata (title, genres, tags, year) when the bundle has it."""
    m = _model()
    i = m.engine.items.index(item_id, kind="item")
    out = {"id": item_id}
    meta = m.engine.item_metadata
    if meta is not None:
        row = meta.iloc[i]
        for key in ("title", "genres", "tags", "year"):
            if key in meta.columns:
                value = row[key]
                if isinstance(value, (list, tuple, np.ndarray)):
                    out[key] = [str(v) for v in value]
                elif value is not None and not (isinstance(value, float) and np.isnan(value)) and \
                        str(value) not in ("<NA>", "nan"):
                    out[key] = int(value) if key == "year" else str(value)
    return out


@blp.route("/model")
@blp.response(200, s.ModelInfo)
def model_info():
    """What is being served: version, training time, held-out metrics, index recall."""
    m = _model()
    man = m.manifest
    return {"version": m.version, "model": man["model"]["class"], "params": man["model"]["params"],
            "created_at": man["created_at"], "recsys_version": man["recsys_version"],
            "n_users": man["n_users"], "n_items": man["n_items"], "factors": man["factors"],
            "metrics": {k: float(v) for k, v in man.get("metrics", {}).items()},
            "index": man.get("index_measured", {})}
