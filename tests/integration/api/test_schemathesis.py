"""Property-based: every operation of /openapi.json, called with a valid API token and
generated inputs, answers without a server error (no 5xx). Part of the fuzz suite (see
tests/fuzz_settings.py): a fixed seed (``derandomize``), the request guard in front."""

from __future__ import annotations

import warnings
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings

from ehi_bridge.app import create_api
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from tests.integration.api.factories import (
    fhir,
    make_connection,
    make_event,
    make_export,
    make_resource,
)

MAX_EXAMPLES = 25


def seed(db: Database) -> None:
    with db.session() as session:
        connection = make_connection(session, 1, external_id="patient-1")
        make_export(session, connection, status="failed")
        make_event(session, 1, org_connection_id=connection.org_connection_id, status="parked")
        make_resource(session, connection, "Patient", "p1", fhir("Patient", "p1"))


def test_no_server_errors(settings: Settings, db: Database, token: str) -> None:
    seed(db)
    app = create_api(settings, db)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    operations = 0
    calls: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @hypothesis_settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                response = case.call(headers=headers)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")

        call()
    assert operations >= 18
    assert len(calls) >= operations * 5  # generation did not stall
    assert failures == []
