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
