"""Request and response schemas (marshmallow): the OpenAPI spec is generated from these.

Size limits are the app's config (`LIMITS` are their defaults; RECSYS_MAX_K=5000 raises one): the validators
below read them when a request is validated and when the spec is built (`create_app` registers the views
inside the app's context), so what is enforced and what the spec states are the same number.
"""
from __future__ import annotations

import re

from flask import current_app, has_app_context
from marshmallow import Schema, fields, validate

LIMITS = {"MAX_K": 1000, "MAX_BATCH_USERS": 1000, "MAX_HISTORY_ITEMS": 1000, "MAX_FEEDBACK_EVENTS": 1000}


def limit(key: str) -> int:
    """The app's configured limit `key` (its `LIMITS` default outside an app context)."""
    return int(current_app.config[key]) if has_app_context() else LIMITS[key]


class RangeUpTo(validate.Range):
    """Range(min, the configured limit `key`)."""

    def __init__(self, min: int, key: str):
        self.key = key
        super().__init__(min=min)

    max = property(lambda self: limit(self.key), lambda self, value: None)


class LengthUpTo(validate.Length):
    """Length(min, the configured limit `key`)."""

    def __init__(self, min: int, key: str):
        self.key = key
        super().__init__(min=min)

    max = property(lambda self: limit(self.key), lambda self, value: None)


NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def bundle_attributes() -> tuple[list[str], list[str]]:
    """(attribute columns, numeric ones) of the bundle the app serves; none outside an app or before a load."""
    from .state import get_state

    loaded = get_state().current if has_app_context() else None
    return loaded.engine.catalogue.attributes if loaded is not None else ([], [])


def filter_pattern() -> str:
    """The filter expressions the served bundle accepts: attribute:value[,value...] on any of its columns,
    attribute<=number / >=number on its numeric ones (a bundle without metadata accepts none)."""
    columns, numeric = bundle_attributes()
    if not columns:
        return r"^[^\s\S]$"
    any_column = "|".join(re.escape(c) for c in columns)
    values = rf"(?:{any_column})\s*:.*[^,\s].*"
    if not numeric:
        return rf"^{values}$"
    return rf"^(?:{values}|(?:{'|'.join(re.escape(c) for c in numeric)})\s*(?:<=|>=)\s*{NUMBER}\s*)$"


class FilterExpression(validate.Regexp):
    """A filter the served bundle can apply (`filter_pattern`, read at each request and when the spec is built,
    like the size limits), so the spec states which attributes exist and which take bounds."""

    def __init__(self):
        super().__init__(".*")

    regex = property(lambda self: re.compile(filter_pattern()), lambda self, value: None)

    @property
    def error(self) -> str:
        columns, numeric = bundle_attributes()
        return ("Filter {input!r} does not fit this bundle's item attributes: write attribute:value (or value,value "
                f"for any of several) on one of {columns}, or attribute<=number / attribute>=number on one of "
                f"{numeric}.")

    @error.setter
    def error(self, value: str) -> None:
        pass


FILTER_HELP = ("item attribute filters, all of which must hold: attribute:value (or value,value for any of "
               "several), attribute<=number or attribute>=number; e.g. category:shoes, price<=100")
K = fields.Integer(load_default=10, validate=RangeUpTo(1, "MAX_K"), metadata={"description": "how many items to return"})


class RecommendQuery(Schema):
    k = K
    offset = fields.Integer(load_default=0, validate=RangeUpTo(0, "MAX_K"),
                            metadata={"description": "skip this many of the best items (paging); at most the "
                                                     "maximum of k"})
    exclude = fields.List(fields.String(), load_default=list, metadata={"description": "item ids to leave out"})
    genre = fields.List(fields.String(), load_default=list,
                        metadata={"description": "only items with any of these genres (filter=genres:...)"})
    filter = fields.List(fields.String(validate=FilterExpression()), load_default=list, metadata={"description": FILTER_HELP})
    include_seen = fields.Boolean(load_default=False, metadata={"description": "allow items the user has seen"})
    explain = fields.Boolean(load_default=False, metadata={"description": "add to each item the history items "
                                                                          "that contributed most to its score"})


class KQuery(Schema):
    k = K


class PopularQuery(Schema):
    k = K
    genre = fields.List(fields.String(), load_default=list)
    filter = fields.List(fields.String(validate=FilterExpression()), load_default=list, metadata={"description": FILTER_HELP})


class Reason(Schema):
    item = fields.String(required=True, metadata={"description": "an item of the user's history"})
    share = fields.Float(allow_none=True, metadata={"description": "its contribution over the sum of the "
                                                                   "history's contributions to the score"})


class ScoredItem(Schema):
    id = fields.String(required=True)
    score = fields.Float(required=True)
    title = fields.String(allow_none=True)
    attributes = fields.Dict(keys=fields.String(), metadata={"description": "the item's columns in the bundle "
                                                                             "(when it has item metadata)"})
    because = fields.List(fields.Nested(Reason), metadata={"description": "with explain=true: the history "
                                                                          "items that contributed most"})


class ScoredUser(Schema):
    id = fields.String(required=True)
    score = fields.Float(required=True)


class Recommendations(Schema):
    user = fields.String(required=True)
    items = fields.List(fields.Nested(ScoredItem), required=True)
    fallback = fields.Boolean(required=True, metadata={"description": "true: popularity (user unknown)"})
    model_version = fields.String(required=True)
    variant = fields.String(metadata={"description": "during an A/B test (RECSYS_BUNDLE_B): 'A' or 'B', the "
                                                     "variant this user is always answered by"})
    explanation = fields.String(metadata={"description": "with explain=true: 'exact' (the score split over the "
                                                         "history), 'fold-in' (the split of the fold-in of the "
                                                         "same history) or 'none' (no history)"})


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
                        validate=LengthUpTo(1, "MAX_BATCH_USERS"))
    k = K
    filters = fields.List(fields.String(validate=FilterExpression()), load_default=list, metadata={"description": FILTER_HELP})


class BatchResponse(Schema):
    results = fields.List(fields.Nested(Recommendations), required=True)


class SessionRequest(Schema):
    items = fields.List(fields.String(validate=validate.Length(min=1, max=256)), required=True,
                        validate=LengthUpTo(1, "MAX_HISTORY_ITEMS"),
                        metadata={"description": "item ids the anonymous user interacted with"})
    k = K
    filters = fields.List(fields.String(validate=FilterExpression()), load_default=list, metadata={"description": FILTER_HELP})


class Item(Schema):
    id = fields.String(required=True)
    title = fields.String(allow_none=True)
    genres = fields.List(fields.String())
    tags = fields.List(fields.String())
    year = fields.Integer(allow_none=True)
    attributes = fields.Dict(keys=fields.String(), required=True,
                             metadata={"description": "every metadata column the bundle has for the item"})


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
    request_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64),
                               metadata={"description": "the X-Request-Id of the answer this event responds to"})


class FeedbackRequest(Schema):
    events = fields.List(fields.Nested(FeedbackEvent), required=True, validate=LengthUpTo(1, "MAX_FEEDBACK_EVENTS"))


class FeedbackResponse(Schema):
    stored = fields.Integer(required=True)
    duplicates = fields.Integer(required=True)


class NewItemInteraction(Schema):
    user = fields.String(required=True, validate=validate.Length(min=1, max=256))
    weight = fields.Float(load_default=1.0, validate=validate.Range(min=-1e6, max=1e6), allow_nan=False)


class NewItem(Schema):
    id = fields.String(required=True, validate=validate.Length(min=1, max=256))
    attributes = fields.Dict(keys=fields.String(), load_default=dict,
                             metadata={"description": "catalogue columns, e.g. name, category, brand, price"})
    interactions = fields.List(fields.Nested(NewItemInteraction), load_default=list,
                               validate=LengthUpTo(0, "MAX_FEEDBACK_EVENTS"),
                               metadata={"description": "stored as feedback events of these users"})


class NewItemsRequest(Schema):
    items = fields.List(fields.Nested(NewItem), required=True, validate=LengthUpTo(1, "MAX_FEEDBACK_EVENTS"))


class NewItemsResponse(Schema):
    stored = fields.Integer(required=True)
    rules = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                        metadata={"description": "per item, how it got its vector: fold-in, neighbours, "
                                                 "item tower or content"})
    model_version = fields.String(required=True)


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
