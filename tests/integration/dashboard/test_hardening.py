"""Dashboard inputs that answered 500 (cursors out of range or naive, NUL in filters), and
ownership conflicts shown to the operator."""

from __future__ import annotations

import base64

import pytest

from ehi_bridge.connections.service import record_widget_complete
from ehi_bridge.webhooks.service import apply_batch
from tests.integration.dashboard.conftest import Dash
from tests.integration.dashboard.helpers import login
from tests.integration.webhooks.test_apply import SETTINGS, store
from tests.webhook_client import connection_success, envelope


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "query",
    [
        "/dashboard/connections?after=" + _cursor("2026-01-01T00:00:00|abc"),  # naive datetime
        "/dashboard/connections?after=" + _cursor("9999-12-31T23:59:59-23:59|abc"),  # > max UTC
        "/dashboard/connections?after=" + _cursor("0001-01-01T00:00:00+14:00|abc"),  # < min UTC
        "/dashboard/events?before=" + str(10**30),
        "/dashboard/connections?q=a%00b",
        "/dashboard/events?type=a%00b",
    ],
)
def test_bad_cursors_and_filters_are_400(dash: Dash, query: str) -> None:
    login(dash.client)
    response = dash.client.get(query)
    assert response.status_code == 400, response.text


def test_records_after_out_of_range_is_400(dash: Dash) -> None:
    login(dash.client)
    key = dash.seeded.connection_id
    response = dash.client.get(f"/dashboard/connections/{key}/records?type=Patient&after={10**30}")
    assert response.status_code == 400


def test_an_ownership_conflict_is_shown_on_the_failures_page(dash: Dash) -> None:
    with dash.db.session() as session:
        record_widget_complete(
            session, {"org_connection_id": "org-owned", "external_id": "patient-A"}, "test"
        )
    event = envelope(
        "patient.connection_success", connection_success("org-owned", external_id="patient-B")
    )
    inbox_id = store(dash.db, event)
    assert apply_batch(dash.db, SETTINGS).parked == [inbox_id]
    login(dash.client)
    page = dash.client.get("/dashboard/failures").text
    assert f'id="event-{inbox_id}"' in page
    assert "ownership conflict" in page
