"""The recommendations endpoint's hot path: answers through the loaded model's response cache, a reader for plain query
strings that skips webargs, and a writer of the answer's JSON that skips building its dicts. All make answers
cheaper, never different.

    fastpath.respond(model, Query(user, k), answer)   # cached (server/cache.py) when the user has no feedback
    blueprint.ARGUMENTS_PARSER = fastpath.Parser()     # GET ...?k=5&offset=5 without marshmallow
    fastpath.recommendations_json(user, ids, scores, titles, fallback, version)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from json import encoder as json_encoder
from typing import NamedTuple

from flask import Flask, Response, current_app, request
from flask.json.provider import DefaultJSONProvider
from flask_smorest import abort
from marshmallow import fields
from webargs.flaskparser import FlaskParser
from werkzeug.datastructures import MultiDict

from . import schemas as s
from .metrics import ANSWER_KINDS, CACHE_RESULTS
from .state import Loaded, get_feedback


class Query(NamedTuple):
    """One recommendations request (GET /v1/users/<user>/recommendations); also its response-cache key."""

    user: str
    k: int
    offset: int = 0
    exclude: tuple[str, ...] = ()
    genres: tuple[str, ...] = ()
    include_seen: bool = False
    filters: tuple[str, ...] = ()  # their text, as `recsys.catalogue.Filter.parse` reads it


History = list[tuple[str, float]]
Answer = Callable[[Loaded, Query, History], str]  # the Recommendations document for a query, as JSON


def respond(m: Loaded, query: Query, answer: Answer) -> Response:
    """`answer(m, query, history)` as a JSON response. An answer for a user without stored feedback depends on
    nothing but the loaded model and the request, so its serialised body is kept in the model's response
    cache; a user with stored feedback is always answered afresh (their first event sends their next request
    down the fold-in path, uncached). `answer` validates the query (e.g. its filters) before anything is
    computed or cached."""
    history = get_feedback().history(query.user)
    key = None if history else query
    body = None if key is None else m.responses.get(key)
    CACHE_RESULTS["bypass" if key is None else "miss" if body is None else "hit"].inc()
    if body is None:
        # written in the Recommendations schema's shape and types (tests check the bytes equal the schema's
        # dump): dumping it through marshmallow cost a third of a computed answer's time
        body = (answer(m, query, history) + "\n").encode()
        if key is not None:
            m.responses.put(key, body)
    # the writer puts "fallback" first (sorted keys): the kind of a cached answer costs no parsing
    ANSWER_KINDS["fold-in" if history else "fallback" if body.startswith(b'{"fallback": true') else "model"].inc()
    return current_app.response_class(body, mimetype="application/json")


_string = json_encoder.encode_basestring_ascii


def _number(x: float) -> str:  # as json writes a float
    if math.isfinite(x):
        return float.__repr__(x)
    return "NaN" if math.isnan(x) else "Infinity" if x > 0 else "-Infinity"


def recommendations_json(user: str, ids: list[str], scores: list[float], titles: list[str | None],
                         fallback: bool, version: str, attributes: list[str] | None = None,
                         variant: str | None = None) -> str:
    """The Recommendations document {user, items: [{attributes, id, score, title}, ...], fallback, model_version}
    as Flask's default JSON provider writes its dict (keys sorted, ASCII, ', ' and ': '), with no dicts built:
    about half the time of building the item dicts and dumping them (benchmarks/README.md). attributes: each
    item's attributes as JSON text (`Catalogue.attributes_json_at`), None when the bundle has no metadata."""
    tail = "" if variant is None else f', "variant": {_string(variant)}'  # (sorted: after "user")
    heads = [""] * len(ids) if attributes is None else [f'"attributes": {a}, ' for a in attributes]
    items = ", ".join([f'{{{h}"id": {_string(i)}, "score": {_number(s)}, "title": '
                       f'{"null" if t is None else _string(t)}}}' for h, i, s, t in zip(heads, ids, scores, titles)])
    return (f'{{"fallback": {"true" if fallback else "false"}, "items": [{items}], '
            f'"model_version": {_string(version)}, "user": {_string(user)}{tail}}}')


def writes_as_flask_does(app: Flask) -> bool:
    """Whether `recommendations_json` writes what this app's JSON provider would: Flask's default provider
    with its default settings (sorted keys, ASCII)."""
    provider = app.json
    return type(provider) is DefaultJSONProvider and provider.sort_keys and provider.ensure_ascii


class Parser(FlaskParser):
    """webargs' Flask parser, with one shortcut: a plain query string of the recommendations endpoint
    (`plain_query`) is read without marshmallow (measured at about a third of the handler's CPU once answers
    are cached). Anything else (exclude, genre, filter, repeated keys, values webargs would reject or coerce)
    is parsed, validated and reported by webargs as usual; the view and its documentation are one. A query
    parameter the schema does not declare is a 422 naming the ones it does (never silently ignored)."""

    def parse(self, argmap, req=None, *, location=None, **kwargs):
        if location == "query" and isinstance(argmap, s.RecommendQuery):
            plain = plain_query(request.args)
            if plain is not None:
                k, offset, include_seen = plain
                return {**defaults(), "k": k, "offset": offset, "include_seen": include_seen}
        if location == "query" and hasattr(argmap, "fields"):
            known = {f.data_key or name for name, f in argmap.fields.items()}
            unknown = sorted(set(request.args) - known)
            if unknown:
                abort(422, message=f"Unknown query parameter(s) {unknown}. Available: {sorted(known)}.")
        return super().parse(argmap, req, location=location, **kwargs)


_FIELDS = s.RecommendQuery().fields
_K_FIELD, _OFFSET_FIELD = _FIELDS["k"], _FIELDS["offset"]


def defaults() -> dict:
    """RecommendQuery's defaults, as marshmallow fills them in (a callable default called afresh)."""
    return {name: f.load_default() if callable(f.load_default) else f.load_default for name, f in _FIELDS.items()}


def plain_query(args: MultiDict) -> tuple[int, int, bool] | None:
    """(k, offset, include_seen) when the query string is plainly valid, with the schema's defaults; else
    None. Same answers as RecommendQuery for the strings it accepts: digits parse as int() does, booleans
    use marshmallow's own truthy/falsy spellings, ranges come from the schema's own validators."""
    k, offset, include_seen = _K_FIELD.load_default, _OFFSET_FIELD.load_default, _FIELDS["include_seen"].load_default
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
