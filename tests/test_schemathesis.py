"""Property-based API tests generated from the app's own OpenAPI spec (schemathesis): for every operation,
generated requests never get a 5xx and every response matches the spec's schema and content type."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from schemathesis.specs.openapi import checks as openapi_checks

from server import create_app

KEY = "schema-key"
CHECKS = [checks.not_a_server_error, openapi_checks.response_schema_conformance,
          openapi_checks.content_type_conformance]


@pytest.fixture(scope="module")
def api_schema(models_root, tmp_path_factory):
    db = tmp_path_factory.mktemp("st") / "fb.db"
    app = create_app({"BUNDLE": str(models_root), "API_KEYS": KEY, "FEEDBACK_DB_URL": f"sqlite:///{db}"})
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


def test_every_operation_survives_generated_requests(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.headers = {**(case.headers or {}), "X-API-Key": KEY}
            case.call_and_validate(checks=CHECKS)

        check()


def test_the_schemathesis_cli_with_every_check_finds_nothing_against_a_live_server(models_root, tmp_path):
    """`schemathesis run --checks all` (ST202 and the negative-data checks included) against `recsys serve` on a
    loopback port: what the README promises of the spec, checked the way a client's CI would."""
    import subprocess

    from recsys.service import BIN, environment, free_port, start, stop, wait_ready

    port = free_port()
    env = environment(RECSYS_API_KEYS=KEY, RECSYS_FEEDBACK_DB_URL=f"sqlite:///{tmp_path / 'fb.db'}")
    proc = start([str(BIN / "recsys"), "serve", "--bundle", str(models_root), "--port", str(port), "--workers", "2"],
                 env)
    try:
        wait_ready(proc, port)
        run = subprocess.run([str(BIN / "schemathesis"), "run", "--checks", "all", "--max-examples", "15", "--seed",
                              "1", "--header", f"X-API-Key: {KEY}", "--report-dir", str(tmp_path / "report"),
                              f"http://127.0.0.1:{port}/openapi.json"],
                             check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        stop(proc)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
