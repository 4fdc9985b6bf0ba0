"""Fuzz of the API's and the dashboard's query parameters, on both databases: filters,
cursors, limits and dates of every list, with hostile values (NUL, huge numbers, naive
and out-of-range dates, forged cursors). No answer may be a 500."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ehi_bridge.app import create_api
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from tests.fuzz_settings import fuzz_settings
from tests.integration.api.factories import TestClient
from tests.integration.api.test_schemathesis import seed
from tests.integration.dashboard.helpers import add_user, login

API_LISTS = ["/api/connections", "/api/exports", "/api/events", "/api/resources"]
DASHBOARD_LISTS = ["/dashboard/connections", "/dashboard/events", "/dashboard/failures"]
NAMES = [
    "cursor", "limit", "status", "mode", "since", "until", "type", "external_id",
    "connection_id", "platform", "org_connection_id", "after", "before", "q", "format",
]  # fmt: skip


def _b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).decode().rstrip("=")


big = st.integers(-(10**40), 10**40).map(str)
dates = st.sampled_from(
    ["2026-01-01T00:00:00", "2026-01-01T00:00:00+00:00", "9999-12-31T23:59:59-23:59",
     "0001-01-01T00:00:00+14:00", "2026-13-45", "1" * 30, "-1"]
)  # fmt: skip
json_bits = st.lists(
    st.one_of(st.text(max_size=20), st.integers(-(2**70), 2**70), dates, st.none()), max_size=4
)
cursors = st.one_of(
    json_bits.map(lambda parts: _b64(json.dumps(parts).encode())),
    st.tuples(st.sampled_from(["c", "x", "e", "r"]), json_bits).map(
        lambda kp: _b64(json.dumps([kp[0], *kp[1]]).encode())
    ),
    st.tuples(dates, st.text(max_size=20)).map(lambda dt: _b64(f"{dt[0]}|{dt[1]}".encode())),
)
values = st.one_of(st.text(max_size=40), big, dates, cursors, st.sampled_from(["\x00", "a\x00b"]))
params = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=8), values, max_size=4)


def _check(client: TestClient, paths: list[str], headers: dict[str, str], cases: int) -> None:
    answered: list[int] = []

    @given(path=st.sampled_from(paths), query=params)
    @fuzz_settings(cases)
    def call(path: str, query: dict[str, Any]) -> None:
        response = client.get(path, params=query, headers=headers, follow_redirects=False)
        answered.append(response.status_code)
        assert response.status_code < 500, (path, query, response.status_code)

    call()
    assert len(answered) >= cases


def test_api_list_parameters_never_answer_500(
    settings: Settings, db: Database, auth: dict[str, str]
) -> None:
    seed(db)
    with TestClient(create_api(settings, db)) as client:
        _check(client, API_LISTS, auth, 500)


def test_dashboard_list_parameters_never_answer_500(settings: Settings, db: Database) -> None:
    seed(db)
    add_user(db)
    with TestClient(create_api(settings, db)) as client:
        login(client)
        _check(client, DASHBOARD_LISTS, {}, 250)
