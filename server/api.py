"""Versioned endpoints (/v1): parse and validate, call the engine once, format."""
from __future__ import annotations

import os
import signal
from collections.abc import Sequence

from flask import Response, current_app, request
from flask_smorest import Blueprint, abort

from recsys.additions import NewItem, submit
from recsys.catalogue import Filter
from recsys.engine import Recommendation
from recsys.exceptions import DataValidationError, RecsysError
from recsys.explain import annotate
from recsys.feedback import Event

from . import fastpath
from . import schemas as s
from .auth import require_key
from .fastpath import History, Query
from .metrics import FEEDBACK_EVENTS, FILTER_EMPTIED
from .state import Loaded, get_feedback, get_state, get_states, variant_of

blp = Blueprint("v1", __name__, url_prefix="/v1", description="Recommendations, similar items and users")
blp.ARGUMENTS_PARSER = fastpath.Parser()  # plain recommendation queries skip marshmallow (fastpath.Parser)


@blp.before_request
def _read_auth() -> None:
    if current_app.config["READ_REQUIRES_KEY"] and request.method == "GET":
        require_key()


def _model(wait: float | None = None, user: str | None = None) -> Loaded:
    """The model being served, with the items added so far (asking the database at most every `wait` seconds,
    by default ADDITIONS_POLL_SECONDS). During an A/B test, `user`'s variant's model (`variant_of`)."""
    poll = current_app.config["ADDITIONS_POLL_SECONDS"] if wait is None else wait
    states = get_states()
    config = current_app.config
    state = states[1] if user is not None and len(states) > 1 and \
        variant_of(user, float(config["AB_SHARE"]), str(config["AB_SALT"])) == "B" else states[0]
    loaded = state.with_additions(get_feedback(), poll)
    if loaded is None:
        abort(503, message="No model loaded: the service is not ready (see /readyz).")
    return loaded


def _filters(genres: Sequence[str] = (), texts: Sequence[str] = ()) -> list[Filter]:
    """The filters of a request: `genre=` values (an alias of filter=genres:...) and `filter=` expressions."""
    return [*([Filter("genres", tuple(genres))] if genres else []), *(Filter.parse(t) for t in texts)]


def _recommend(m: Loaded, q: Query, history: History) -> Recommendation:
    return m.engine.recommend_user(q.user, q.k, offset=q.offset, exclude=q.exclude,
                                   filters=_filters(q.genres, q.filters),
                                   include_seen=q.include_seen, history=history)


def recommendations(m: Loaded, q: Query, history: History) -> dict:
    """One user's Recommendations document; history: the user's stored feedback events."""
    return document(m, _recommend(m, q, history))


def document(m: Loaded, rec: Recommendation) -> dict:
    """A Recommendations document of one answer."""
    return {"user": rec.user, "items": m.engine.catalogue.scored_items(rec.item_ids, rec.scores, rec.item_index),
            "fallback": rec.fallback, "model_version": m.version, **({"variant": m.variant} if m.variant else {})}


def recommendations_body(m: Loaded, q: Query, history: History) -> str:
    """`recommendations` as the JSON the app's provider writes of it."""
    if not fastpath.writes_as_flask_does(current_app):
        return current_app.json.dumps(recommendations(m, q, history))
    rec = _recommend(m, q, history)
    if (q.filters or q.genres) and sum(i is not None for i in rec.item_ids) < q.k:
        FILTER_EMPTIED.inc()
    catalogue = m.engine.catalogue
    ids, scores, titles, idx = catalogue.scored_item_fields(rec.item_ids, rec.scores, rec.item_index)
    attributes = None if catalogue.metadata is None else catalogue.attributes_json_at(idx)
    return fastpath.recommendations_json(q.user, ids, scores, titles, rec.fallback, m.version, attributes, m.variant)


def respond(query: Query) -> Response:
    """A recommendations request as a JSON response (through the response cache of the user's model)."""
    return fastpath.respond(_model(user=query.user), query, recommendations_body)


@blp.route("/feedback", methods=["POST"])
@blp.arguments(s.FeedbackRequest())
@blp.response(201, s.FeedbackResponse)
@blp.doc(security=[{"ApiKey": []}])
def feedback(body):
    """Store interaction events (committed before the 201); they change the user's recommendations at once."""
    require_key()
    stored, duplicates = get_feedback().add(
        Event(e["user"], e["item"], e["weight"], e["type"], e["timestamp"], e["event_id"], e["request_id"])
        for e in body["events"])
    FEEDBACK_EVENTS.inc(stored)
    return {"stored": stored, "duplicates": duplicates}


@blp.route("/items", methods=["POST"])
@blp.arguments(s.NewItemsRequest())
@blp.response(201, s.NewItemsResponse)
@blp.doc(security=[{"ApiKey": []}])
def add_items(body):
    """Add items to the served model without retraining: each gets a vector from its interactions (stored as
    feedback events) or, with none, from its text attributes; every worker and instance serves them within a
    second or so (`recsys.additions`). Items this model cannot take (ids it has, attributes it lacks, nothing to
    place them by) are a 409 naming them; nothing is stored then."""
    require_key()
    state, store = get_state(), get_feedback()
    new = [NewItem(i["id"], i["attributes"], [(e["user"], e["weight"]) for e in i["interactions"]])
           for i in body["items"]]
    try:
        rules = submit(_model(wait=0).engine, store, new)
    except DataValidationError as e:  # well-formed, but not with this model (its ids, users, columns): 409
        abort(409, message=str(e))
    return {"stored": len(rules), "rules": rules, "model_version": state.with_additions(store, wait=0).version}


@blp.route("/admin/reload", methods=["POST"])
@blp.response(200, s.ReloadResponse)
@blp.doc(security=[{"ApiKey": []}])
def reload():
    """Load the bundle `current` points at (checksums verified) and swap it in; a corrupt one is refused
    and the old model keeps serving. Under gunicorn, every worker is then replaced gracefully (SIGHUP)."""
    require_key()
    states = get_states()
    previous = states[0].current.version if states[0].current else None
    try:
        loaded = states[0].load()
        for state in states[1:]:  # an A/B test reloads both variants' `current`
            state.load()
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
    """Top-k items for a user (popularity when the user is unknown: `fallback` is true); with explain=true, each
    item says which of the user's history items contributed most to its score."""
    query = Query(user_id, args["k"], args["offset"], tuple(args["exclude"]), tuple(args["genre"]),
                  args["include_seen"], tuple(args["filter"]))
    return explained(_model(user=user_id), query) if args["explain"] else respond(query)


def explained(m: Loaded, q: Query) -> dict:
    """A Recommendations document with each item's reasons (`recsys.explain`), computed afresh (never cached)."""
    history = get_feedback().history(q.user)
    rec = _recommend(m, q, history)
    doc = document(m, rec)
    doc["explanation"] = annotate(m.engine, q.user, doc["items"], history)
    return doc


@blp.route("/recommendations/batch", methods=["POST"])
@blp.arguments(s.BatchRequest())
@blp.response(200, s.BatchResponse)
def recommend_batch(body):
    """Top-k for many users in one call (the known users without feedback ranked together); during an A/B test
    each user is answered by their variant's model."""
    users, histories = body["users"], get_feedback().histories(body["users"])
    models = [_model(user=u) for u in users]
    results: list[dict | None] = [None] * len(users)
    for m in {id(m): m for m in models}.values():
        rows = [r for r, other in enumerate(models) if other is m]
        recs = m.engine.recommend_users([users[r] for r in rows], body["k"], filters=_filters((), body["filters"]),
                                        histories={users[r]: histories[users[r]] for r in rows})
        for r, rec in zip(rows, recs):
            results[r] = document(m, rec)
    return {"results": results}


@blp.route("/sessions/recommendations", methods=["POST"])
@blp.arguments(s.SessionRequest())
@blp.response(200, s.ItemList)
def recommend_session(body):
    """Top-k for an anonymous session from the item ids it touched (fold-in, no retraining)."""
    m = _model()
    rec = m.engine.recommend_user(None, body["k"], history=[(item, 1.0) for item in body["items"]],
                                  filters=_filters((), body["filters"]))
    return {"items": m.engine.catalogue.scored_items(rec.item_ids, rec.scores), "fallback": rec.fallback,
            "model_version": m.version}


@blp.route("/items/<string:item_id>/similar")
@blp.arguments(s.KQuery(), location="query")
@blp.response(200, s.SimilarItems)
def similar_items(args, item_id):
    """The items nearest to an item."""
    m = _model()
    ids, scores = m.engine.similar_items([item_id], args["k"])
    return {"item": item_id, "items": m.engine.catalogue.scored_items(ids[0], scores[0]), "model_version": m.version}


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
    ids, counts = m.engine.popular_items(args["k"], filters=_filters(args["genre"], args["filter"]))
    return {"items": m.engine.catalogue.scored_items(ids, counts), "fallback": False, "model_version": m.version}


ITEM_FIELDS = ("title", "genres", "tags", "year")  # the Item schema's metadata fields


@blp.route("/items/<string:item_id>")
@blp.response(200, s.Item)
def item(item_id):
    """An item's metadata: every column the bundle has for it in `attributes` (a retailer's category, brand,
    price; MovieLens's genres), and title, genres, tags and year at the top level when it has them."""
    record = _model().engine.catalogue.record(item_id)
    out: dict = {"id": item_id}
    for key in ITEM_FIELDS:
        if key in record:
            value = record[key]
            out[key] = value if isinstance(value, list) else int(value) if key == "year" else str(value)
    out["attributes"] = {key: value for key, value in record.items() if key != "item"}
    return out


@blp.route("/model")
@blp.response(200, s.ModelInfo)
def model_info():
    """What is being served: version, training time, held-out metrics, index recall."""
    m = _model()
    man = m.manifest
    return {"version": m.version, "model": man.model_class, "params": man.params, "created_at": man.created_at,
            "recsys_version": man.recsys_version, "n_users": man.n_users, "n_items": man.n_items,
            "factors": man.factors, "metrics": {k: float(v) for k, v in man.metrics.items()},
            "index": man.index_measured}
