"""Connecting a hospital directly, over real HTTP against the SMART sandbox: the signed
link decides the patient (never the request), the callback's ``state`` is one-use, the
catalog search, the API's link and filter, and the dashboard's CSRF-protected re-sync."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ehi_bridge.app import create_api
from ehi_bridge.auth.connect_links import make_connect_token, read_connect_token
from ehi_bridge.auth.service import create_api_token
from ehi_bridge.config import Settings
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.engine import Database
from ehi_bridge.exports.models import Export
from ehi_bridge.simulator.smart.server import SmartSandbox
from tests.e2e.browser.conftest import ThreadedServer
from tests.integration.dashboard.helpers import add_user, login, seed, settings_for
from tests.smart_flow import consent
from tests.support import free_port

INSTITUTION = "sandbox-general"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SmartSandbox]:
    with SmartSandbox() as box:
        yield box


@dataclass
class Live:
    url: str
    db: Database
    settings: Settings
    api_token: str
    fasten_connection: str

    def link(self, external_id: str) -> str:
        return make_connect_token(self.settings, external_id, ttl=600)

    def start(self, token: str, body: dict[str, str]) -> httpx.Response:
        return httpx.post(
            f"{self.url}/connect/direct", json=body, headers={"X-Connect-Token": token}
        )

    def connections(self, external_id: str) -> list[Connection]:
        with self.db.read_session() as session:
            return list(
                session.scalars(select(Connection).where(Connection.external_id == external_id))
            )


@pytest.fixture
def live(db: Database, database_url: str, sandbox: SmartSandbox, tmp_path: Path) -> Iterator[Live]:
    catalog = tmp_path / "catalog.json"
    entry = {
        "id": INSTITUTION,
        "name": "Sandbox General Hospital",
        "platform": "sandbox-generic",
        "fhir_base_url": sandbox.fhir_base("generic"),
    }
    catalog.write_text(json.dumps([entry]))
    add_user(db)
    seeded = seed(db)
    with db.session() as session:
        _, api_token = create_api_token(session, "direct-tests")
    port = free_port()
    settings = settings_for(
        database_url,
        data_dir=tmp_path / "data",
        smart_sandbox_url=sandbox.url,
        sources_catalog_file=catalog,
        public_base_url=f"http://127.0.0.1:{port}",
    )
    with ThreadedServer(create_api(settings, db), port) as server:
        yield Live(server.base_url, db, settings, api_token, seeded.connection_id)


def test_a_link_connects_only_its_own_patient(live: Live) -> None:
    token_a = live.link("patient-a")
    # The body names the institution only: a patient id in it is refused.
    smuggled = live.start(token_a, {"institution": INSTITUTION, "external_id": "patient-b"})
    assert smuggled.status_code == 422
    assert live.start("", {"institution": INSTITUTION}).status_code == 403
    assert live.start(token_a[:-3] + "xyz", {"institution": INSTITUTION}).status_code == 403
    expired = make_connect_token(live.settings, "patient-a", ttl=-1)
    assert live.start(expired, {"institution": INSTITUTION}).status_code == 403
    assert live.start(token_a, {"institution": "nowhere"}).status_code == 400

    started = live.start(token_a, {"institution": INSTITUTION})
    assert started.status_code == 200, started.text
    redirect = consent(started.json()["authorize_url"])
    callback = httpx.get(f"{live.url}/sources/callback", params=redirect)
    assert callback.status_code == 200 and "Connected" in callback.text

    (connection,) = live.connections("patient-a")
    assert connection.source == "smart" and connection.platform_type == "sandbox-generic"
    assert live.connections("patient-b") == []
    # Each patient's status shows their own connections only.
    mine = httpx.get(f"{live.url}/connect/status", params={"token": token_a}).text
    theirs = httpx.get(f"{live.url}/connect/status", params={"token": live.link("patient-b")})
    assert "sandbox-generic" in mine
    assert "sandbox-generic" not in theirs.text and "No connections yet." in theirs.text

    # The callback's state is one-use; a wrong one does nothing.
    replay = httpx.get(f"{live.url}/sources/callback", params=redirect)
    assert replay.status_code == 400
    wrong = httpx.get(
        f"{live.url}/sources/callback", params={**redirect, "state": redirect["state"][::-1]}
    )
    assert wrong.status_code == 400
    assert len(live.connections("patient-a")) == 1


def test_the_catalog_search_needs_a_valid_link(live: Live) -> None:
    token = live.link("patient-s")
    found = httpx.get(f"{live.url}/connect/institutions", params={"token": token, "q": "GENERAL"})
    assert found.status_code == 200
    assert f'data-institution="{INSTITUTION}"' in found.text
    none = httpx.get(f"{live.url}/connect/institutions", params={"token": token, "q": "zzz"})
    assert "No health system matches" in none.text
    refused = httpx.get(f"{live.url}/connect/institutions", params={"token": "bad", "q": "a"})
    assert refused.status_code == 403
    page = httpx.get(f"{live.url}/connect", params={"token": token})
    assert 'id="institution-search"' in page.text


def test_api_source_connect_link_and_source_filter(live: Live) -> None:
    body = {"external_id": "patient-api", "ttl_hours": 2}
    refused = httpx.post(f"{live.url}/api/sources/connect-links", json=body)
    assert refused.status_code == 401
    auth = {"Authorization": f"Bearer {live.api_token}"}
    made = httpx.post(f"{live.url}/api/sources/connect-links", json=body, headers=auth)
    assert made.status_code == 201, made.text
    url = made.json()["url"]
    assert url.startswith(f"{live.url}/connect?token=") and url.endswith("#direct")
    token = httpx.URL(url.split("#")[0]).params["token"]
    assert read_connect_token(live.settings, token) == "patient-api"

    started = live.start(token, {"institution": INSTITUTION})
    redirect = consent(started.json()["authorize_url"])
    assert httpx.get(f"{live.url}/sources/callback", params=redirect).status_code == 200

    def listed(source: str) -> list[dict[str, str]]:
        answer = httpx.get(f"{live.url}/api/connections", params={"source": source}, headers=auth)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, str]] = answer.json()["items"]
        return items

    smart = listed("smart")
    assert [c["external_id"] for c in smart] == ["patient-api"]
    assert all(c["source"] == "fasten" for c in listed("fasten"))
    assert live.fasten_connection in {c["id"] for c in listed("fasten")}
    bad = httpx.get(f"{live.url}/api/connections", params={"source": "x"}, headers=auth)
    assert bad.status_code in (400, 422)


def test_dashboard_resync_is_csrf_protected(live: Live) -> None:
    token = live.link("patient-d")
    started = live.start(token, {"institution": INSTITUTION})
    redirect = consent(started.json()["authorize_url"])
    assert httpx.get(f"{live.url}/sources/callback", params=redirect).status_code == 200
    (connection,) = live.connections("patient-d")

    with httpx.Client(base_url=live.url, timeout=15) as client:
        csrf = login(client)  # type: ignore[arg-type]
        listing = client.get("/dashboard/connections", params={"q": "patient-d"}).text
        assert f"/dashboard/connections/{connection.id}/resync" in listing
        assert ">direct<" in listing

        path = f"/dashboard/connections/{connection.id}/resync"
        assert client.post(path, data={}).status_code == 403
        assert client.post(path, data={"csrf_token": "nope"}).status_code == 403
        # The authorization's first sync is still queued: a second is refused.
        busy = client.post(path, data={"csrf_token": csrf})
        assert busy.status_code == 409 and "already in progress" in busy.text
        with live.db.session() as session:
            for export in session.scalars(
                select(Export).where(Export.connection_id == connection.id)
            ):
                export.status = "complete"
        done = client.post(path, data={"csrf_token": csrf})
        assert done.status_code == 303 and "sync_started" in done.headers["location"]
        fasten = client.post(
            f"/dashboard/connections/{live.fasten_connection}/resync", data={"csrf_token": csrf}
        )
        assert fasten.status_code == 409
    with live.db.read_session() as session:
        exports = session.scalars(
            select(Export).where(Export.connection_id == connection.id).order_by(Export.id)
        ).all()
        assert [(e.source, e.trigger) for e in exports] == [("smart", "auto"), ("smart", "manual")]
