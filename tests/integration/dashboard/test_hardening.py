"""Dashboard inputs that answered 500: cursors out of range or naive, NUL in filters."""

from __future__ import annotations

import base64

import pytest

from tests.integration.dashboard.conftest import Dash
from tests.integration.dashboard.helpers import login


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "query",
    [
        "/dashboard/connections?after=" + _cursor("2026-01-01T00:00:00|abc"),  # naive datetime
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
