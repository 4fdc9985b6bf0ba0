"""The connect page: signed link checks, the embedded widget and the status poll."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from ehi_bridge.app import create_api
from ehi_bridge.auth.connect_links import make_connect_token
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database
from tests.integration.dashboard.helpers import Seeded, TestClient, seed, settings_for


@dataclass
class Connect:
    client: TestClient
    settings: Settings
    seeded: Seeded


@pytest.fixture
def connect(db: Database, database_url: str) -> Iterator[Connect]:
    settings = settings_for(
        database_url, stitch_js_url="http://127.0.0.1:9/stitch.js", connect_mode="test"
    )
    seeded = seed(db)
    with TestClient(create_api(settings, db)) as client:
        yield Connect(client=client, settings=settings, seeded=seeded)


def test_page_embeds_the_widget_for_the_links_patient(connect: Connect) -> None:
    token = make_connect_token(connect.settings, "patient-42", ttl=600)
    response = connect.client.get("/connect", params={"token": token})
    assert response.status_code == 200
    html = response.text
    assert '<script src="http://127.0.0.1:9/stitch.js"' in html
    assert 'public-id="public_test_dash"' in html
    assert 'external-id="patient-42"' in html
    assert "/connect/static/connect.js" in html
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"


def test_live_mode_uses_the_live_public_id(db: Database, database_url: str) -> None:
    settings = settings_for(database_url, connect_mode="live")
    with TestClient(create_api(settings, db)) as client:
        token = make_connect_token(settings, "p-live", ttl=600)
        html = client.get("/connect", params={"token": token}).text
    assert 'public-id="public_live_dash"' in html
    assert 'data-mode="live"' in html


def test_external_id_is_escaped(connect: Connect) -> None:
    token = make_connect_token(connect.settings, '"><script>x()</script>', ttl=600)
    html = connect.client.get("/connect", params={"token": token}).text
    assert "<script>x()" not in html
    assert "&#34;&gt;&lt;script&gt;" in html


@pytest.mark.parametrize("kind", ["missing", "tampered", "expired", "other-secret"])
def test_bad_links_get_403(connect: Connect, kind: str) -> None:
    good = make_connect_token(connect.settings, "patient-42", ttl=600)
    token = {
        "missing": "",
        "tampered": good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
        "expired": make_connect_token(
            connect.settings, "patient-42", ttl=60, now=time.time() - 3600
        ),
        "other-secret": make_connect_token(
            connect.settings.model_copy(
                update={"connect_link_secret": [SecretStr("another-secret-value")]}
            ),
            "patient-42",
            ttl=600,
        ),
    }[kind]
    page = connect.client.get("/connect", params={"token": token})
    assert page.status_code == 403
    assert "not valid" in page.text
    assert "patient-42" not in page.text
    status = connect.client.get("/connect/status", params={"token": token})
    assert status.status_code == 403
    htmx = connect.client.get(
        "/connect/status", params={"token": token}, headers={"hx-request": "true"}
    )
    assert htmx.status_code == 403


def test_status_lists_only_this_patients_connections_without_phi(connect: Connect) -> None:
    token = make_connect_token(connect.settings, "patient-42", ttl=600)
    response = connect.client.get("/connect/status", params={"token": token})
    assert response.status_code == 200
    html = response.text
    assert html.count('class="connection-row"') == 1
    assert "epic" in html and "authorized" in html
    assert "failed" in html  # the latest export's status
    assert "cerner" not in html  # someone else's connection
    assert connect.seeded.org_connection_id not in html
    assert "Doe" not in html


def test_status_for_a_patient_without_connections(connect: Connect) -> None:
    token = make_connect_token(connect.settings, "brand-new-patient", ttl=600)
    html = connect.client.get("/connect/status", params={"token": token}).text
    assert "No connections yet." in html


def test_connect_script_is_served(connect: Connect) -> None:
    response = connect.client.get("/connect/static/connect.js")
    assert response.status_code == 200
    assert "/api/connect/complete" in response.text
    assert "X-Connect-Token" in response.text


def test_page_sends_a_csp_allowing_only_us_and_the_widget_origin(connect: Connect) -> None:
    token = make_connect_token(connect.settings, "patient-42", ttl=600)
    response = connect.client.get("/connect", params={"token": token})
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self' http://127.0.0.1:9"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-eval" not in csp
