"""Shared fixtures: small synthetic logs (fast), the bundled MovieLens data (session-scoped), and the REST
service on a small bundle (Flask app and test client)."""
from __future__ import annotations

import os

import pytest
from server_support import KEY

from recsys.bundle import new_version_path, publish
from recsys.data import Interactions, read_interactions, temporal_split
from recsys.datasets import load_movielens, make_synthetic


def _to_interactions(ds) -> Interactions:
    return read_interactions(ds.interactions, user_col="user", item_col="item", weight_col="rating",
                             time_col="timestamp", item_metadata=ds.items)


@pytest.fixture(scope="session")
def synthetic() -> Interactions:
    """300 users x 200 items with planted clusters: big enough to learn, small enough to fit in a second."""
    return _to_interactions(make_synthetic(n_users=300, n_items=200, n_factors=4, interactions_per_user=15,
                                           seed=7))


@pytest.fixture(scope="session")
def synthetic_split(synthetic):
    return temporal_split(synthetic, test_fraction=0.2)


@pytest.fixture(scope="session")
def movielens() -> Interactions:
    return _to_interactions(load_movielens("ml-latest-small"))


@pytest.fixture(scope="session")
def models_root(synthetic, tmp_path_factory):
    """A models root with one small MF bundle published as `current` (for the service tests)."""
    from recsys.models import MF

    root = tmp_path_factory.mktemp("models")
    model = MF(factors=8, epochs=5, progress=False, device="cpu").fit(synthetic)
    publish(root, model.save(new_version_path(root, "mf")))
    return root


# ------------------------------------------------------------------------------------ the service (Flask)
@pytest.fixture(autouse=True)
def no_service_settings_from_the_caller(monkeypatch):
    """The caller's RECSYS_* service settings (e.g. RECSYS_READ_REQUIRES_KEY=true in a shell) do not reach the
    apps and processes the tests start: each test states the settings it needs."""
    from server import DEFAULTS

    for name in [n for n in os.environ if n.removeprefix("RECSYS_") in {*DEFAULTS, "WORKERS"}]:
        monkeypatch.delenv(name)


@pytest.fixture()
def app(models_root, tmp_path):
    """The service on `models_root`, with the test API key and a feedback database file of its own."""
    from server import create_app

    return create_app({"BUNDLE": str(models_root), "TESTING": True, "API_KEYS": [KEY],
                       "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'feedback.db'}"})


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def own_root(synthetic, tmp_path):
    """A models root of this test's own, so publishing new versions does not disturb other tests; and the
    fitted model, to save more versions with."""
    from recsys.models import MF

    root = tmp_path / "models"
    model = MF(factors=8, epochs=2, progress=False, device="cpu").fit(synthetic)
    publish(root, model.save(new_version_path(root, "first")))
    return root, model


# ------------------------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the session (tests/postgres_server.py)."""
    from postgres_server import PostgresServer, missing_reason
    from server_support import require_service

    require_service(missing_reason())
    with PostgresServer() as server:
        yield server


@pytest.fixture()
def postgres_url(postgres, request):
    """A SQLAlchemy URL to a fresh database of this test's own on the session's server."""
    import re

    import psycopg

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50]
    with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=recsys dbname=postgres",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny torch models train on one intra-op thread: OpenMP spinning on a loaded CPU makes them much slower.
    A test module asks for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
