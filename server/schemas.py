"""Request and response schemas (marshmallow): the OpenAPI spec is generated from these."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

MAX_K = 1000
K = fields.Integer(load_default=10, validate=validate.Range(min=1, max=MAX_K),
                   metadata={"description": "how many items to return"})


class RecommendQuery(Schema):
    k = K
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_K),
                            metadata={"description": "skip this many of the best items (paging)"})
    exclude = fields.List(fields.String(), load_default=list, metadata={"description": "item ids to leave out"})
    genre = fields.List(fields.String(), load_default=list,
                        metadata={"description": "only items with any of these genres"})
    include_seen = fields.Boolean(load_default=False, metadata={"description": "allow items the user has seen"})


class KQuery(Schema):
    k = K


class PopularQuery(Schema):
    k = K
    genre = fields.List(fields.String(), load_default=list)


class ScoredItem(Schema):
    id = fields.String(required=True)
    score = fields.Float(required=True)
    title = fields.String(allow_none=True)


class ScoredUser(Schema):
    id = fields.String(required=True)
    score = fields.Float(required=True)


class Recommendations(Schema):
    user = fields.String(required=True)
    items = fields.List(fields.Nested(ScoredItem), required=True)
    fallback = fields.Boolean(required=True, metadata={"description": "true: popularity (user unknown)"})
    model_version = fields.String(required=True)


class SimilarItems(Schema):
    item = fields.String(required=True)
    items = fields.List(fields.Nested(ScoredItem), required=True)
    model_version = fields.String(required=True)


class SimilarUsers(Schema):
    user = fields.String(required=True)
    users = fields.List(fields.Nested(ScoredUser), required=True)
    model_version = fields.String(required=True)


class ItemList(Schema):
    items = fields.List(fields.Nested(ScoredItem), required=True)
    fallback = fields.Boolean(required=True)
    model_version = fields.String(required=True)


class BatchRequest(Schema):
    users = fields.List(fields.String(validate=validate.Length(min=1, max=256)), required=True,
                        validate=validate.Length(min=1, max=1000))
    k = K


class BatchResponse(Schema):
    results = fields.List(fields.Nested(Recommendations), required=True)


class SessionRequest(Schema):
    items = fields.List(fields.String(validate=validate.Length(min=1, max=256)), required=True,
                        validate=validate.Length(min=1, max=1000),
                        metadata={"description": "item ids the anonymous user interacted with"})
    k = K


class Item(Schema):
    id = fields.String(required=True)
    title = fields.String(allow_none=True)
    genres = fields.List(fields.String())
    tags = fields.List(fields.String())
    year = fields.Integer(allow_none=True)


class ModelInfo(Schema):
    version = fields.String(required=True)
    model = fields.String(required=True)
    params = fields.Dict(keys=fields.String())
    created_at = fields.String(required=True)
    recsys_version = fields.String(required=True)
    n_users = fields.Integer(required=True)
    n_items = fields.Integer(required=True)
    factors = fields.Integer(required=True)
    metrics = fields.Dict(keys=fields.String(), values=fields.Float())
    index = fields.Dict(keys=fields.String(), metadata={"description": "per index: recall, latency, kept"})


class FeedbackEvent(Schema):
    user = fields.String(required=True, validate=validate.Length(min=1, max=256))
    item = fields.String(required=True, validate=validate.Length(min=1, max=256))
    weight = fields.Float(load_default=1.0, validate=validate.Range(min=-1e6, max=1e6), allow_nan=False)
    type = fields.String(load_default="interaction", validate=validate.Length(min=1, max=64))
    timestamp = fields.Float(load_default=None, allow_none=True, allow_nan=False,
                             validate=validate.Range(min=0, max=1e11),
                             metadata={"description": "Unix seconds; default: time of receipt"})
    event_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128),
                             metadata={"description": "idempotency key: the same id is stored once"})


class FeedbackRequest(Schema):
    events = fields.List(fields.Nested(FeedbackEvent), required=True, validate=validate.Length(min=1, max=1000))


class FeedbackResponse(Schema):
    stored = fields.Integer(required=True)
    duplicates = fields.Integer(required=True)


class ReloadResponse(Schema):
    version = fields.String(required=True)
    previous = fields.String(allow_none=True)
    workers_restarting = fields.Boolean(required=True)


class Problem(Schema):
    """RFC 9457 problem details."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    errors = fields.Dict(metadata={"description": "per-field validation messages"})
