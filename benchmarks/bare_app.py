"""The baseline for `benchmarks/serving.py`: a minimal Flask app answering the recommendations route with a
static JSON document shaped and sized like the real answer (10 items with id, score and title: about 800
bytes). Flask serialises the same dict on every request, as any JSON endpoint would; there is no model, no
database, no validation, no metrics.

    gunicorn -c server/gunicorn.conf.py 'benchmarks.bare_app:create_app()'

(the command-line app argument overrides the config file's `wsgi_app`). BENCH_BARE_ITEMS sets the number of
items in the document (default 10).
"""
from __future__ import annotations

import os

from flask import Flask

TITLES = ("Forrest Gump (1994)", "Shawshank Redemption, The (1994)", "Pulp Fiction (1994)",
          "Silence of the Lambs, The (1991)", "Matrix, The (1999)",
          "Star Wars: Episode IV - A New Hope (1977)",
          "Jurassic Park (1993)", "Braveheart (1995)", "Terminator 2: Judgment Day (1991)",
          "Schindler's List (1993)")


def document(n_items: int = 10) -> dict:
    items = [{"id": str(1000 + 37 * i), "score": round(4.2 - 0.137 * i, 6), "title": TITLES[i % len(TITLES)]}
             for i in range(n_items)]
    return {"user": "1", "items": items, "fallback": False, "model_version": "20261121T103740Z-mf"}


def create_app() -> Flask:
    app = Flask(__name__)
    doc = document(int(os.environ.get("BENCH_BARE_ITEMS", "10")))

    @app.get("/v1/users/<string:user_id>/recommendations")
    def recommendations(user_id: str):
        return doc

    @app.post("/v1/sessions/recommendations")
    def sessions():  # --traffic sessions: the body is not read, as the static answer needs nothing from it
        return doc

    @app.post("/v1/feedback")
    def feedback():  # the feedback events of --traffic zipf: answered as the service answers one stored event
        return {"stored": 1, "duplicates": 0}, 201

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    return app
