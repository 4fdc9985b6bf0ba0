"""Every dashboard page with data, the buttons' effects and the audit rows."""

from __future__ import annotations

from sqlalchemy import select

from ehi_bridge.auth.models import AuditLog
from ehi_bridge.connections.models import Connection
from ehi_bridge.db.base import utcnow
from ehi_bridge.exports.models import Export
from ehi_bridge.webhooks.models import InboxEvent
from tests.integration.dashboard.conftest import Dash
from tests.integration.dashboard.helpers import USERNAME, login


def _audit(dash: Dash) -> list[AuditLog]:
    with dash.db.read_session() as session:
        return list(session.scalars(select(AuditLog).order_by(AuditLog.id)))


def test_overview_shows_counts_and_chart_data(dash: Dash) -> None:
    login(dash.client)
    response = dash.client.get("/dashboard")
    assert response.status_code == 200
    html = response.text
    assert 'id="chart-deliveries"' in html
    assert 'id="chart-data"' in html
    assert "authorized 1" in html and "revoked 1" in html
    assert "token_refresh_failure" in html  # failures by reason
    assert "patient.connection_success" in html  # deliveries by type
    assert "default-src 'self'" in response.headers["content-security-policy"]


def test_connections_list_search_filters_and_htmx_partial(dash: Dash) -> None:
    login(dash.client)
    seeded = dash.seeded
    everything = dash.client.get("/dashboard/connections")
    assert everything.status_code == 200
    assert seeded.org_connection_id in everything.text
    assert "someone-else" in everything.text

    by_external = dash.client.get("/dashboard/connections", params={"q": seeded.external_id})
    assert seeded.org_connection_id in by_external.text
    assert "someone-else" not in by_external.text

    by_org = dash.client.get("/dashboard/connections", params={"q": seeded.org_connection_id})
    assert seeded.external_id in by_org.text and "someone-else" not in by_org.text

    revoked = dash.client.get("/dashboard/connections", params={"status": "revoked"})
    assert "someone-else" in revoked.text and seeded.org_connection_id not in revoked.text

    epic = dash.client.get("/dashboard/connections", params={"platform": "epic"})
    assert seeded.org_connection_id in epic.text and "someone-else" not in epic.text

    live = dash.client.get("/dashboard/connections", params={"mode": "live"})
    assert "someone-else" in live.text and seeded.org_connection_id not in live.text

    partial = dash.client.get(
        "/dashboard/connections",
        params={"q": seeded.external_id},
        headers={"hx-request": "true", "hx-target": "connection-table"},
    )
    assert partial.status_code == 200
    assert "<html" not in partial.text
    assert 'id="connection-table"' in partial.text
    restore = dash.client.get(
        "/dashboard/connections",
        params={"q": seeded.external_id},
        headers={"hx-request": "true", "hx-history-restore-request": "true"},
    )
    assert "<html" in restore.text


def test_connections_keyset_pagination_walks_every_row_once(dash: Dash) -> None:
    from datetime import timedelta

    now = utcnow()
    with dash.db.session() as session:
        for i in range(120):
            session.add(
                Connection(
                    id=f"bulk{i:04d}",
                    org_connection_id=f"bulk-org-{i:04d}",
                    external_id=f"bulk-{i}",
                    api_mode="test",
                    status="authorized",
                    platform_type="athena",
                    # Equal timestamps in pairs: the id breaks ties.
                    created_at=now - timedelta(minutes=i // 2),
                    updated_at=now,
                )
            )
    login(dash.client)
    seen: list[str] = []
    url: str | None = "/dashboard/connections?platform=athena"
    pages = 0
    import re

    while url:
        html = dash.client.get(url).text
        seen += re.findall(r">(bulk-org-\d{4})<", html)
        more = re.search(r'<a href="(/dashboard/connections\?[^"]+after=[^"]+)"', html)
        url = more.group(1).replace("&amp;", "&") if more else None
        pages += 1
    assert pages == 3
    assert len(seen) == 120
    assert len(set(seen)) == 120


def test_connection_page_shows_everything_and_is_audited(dash: Dash) -> None:
    login(dash.client)
    seeded = dash.seeded
    response = dash.client.get(f"/dashboard/connections/{seeded.connection_id}")
    assert response.status_code == 200
    html = response.text
    assert "patient.connection_success" in html  # timeline
    # The data-quality report as tables, never raw JSON.
    assert (
        "Counts that differ from Fasten&#39;s" in html or "Counts that differ from Fasten's" in html
    )
    assert "Lines not ingested (first ones)" in html and "malformed_json:" in html
    assert "by_type" not in html and "VeryLongResourceTypeName" not in html
    assert "Observation" in html and ">2<" in html  # resources by type / reconciliation
    assert "lines not ingested" in html
    assert 'id="request-export"' in html
    assert "Retry" in html  # the failed export
    # The patient's name and birth date: opening the page is audited (below) before they
    # are read; other record contents only on the audited records view.
    assert 'id="patient-name">Doe<' in html
    assert 'id="patient-birth-date">1980-02-29<' in html
    assert '"status": "final"' not in html and "o1" not in html
    assert "<dd>Epic</dd>" in html  # the brand, not `epic`
    # Reachable by org_connection_id too.
    by_org = dash.client.get(f"/dashboard/connections/{seeded.org_connection_id}")
    assert by_org.status_code == 200
    assert dash.client.get("/dashboard/connections/nope").status_code == 404

    rows = _audit(dash)
    assert [(r.actor_kind, r.actor_name, r.action, r.target_id) for r in rows[-2:]] == [
        ("user", USERNAME, "dashboard.connection.view", seeded.connection_id),
        ("user", USERNAME, "dashboard.connection.view", seeded.connection_id),
    ]


def test_viewing_records_writes_an_audit_row(dash: Dash) -> None:
    login(dash.client)
    seeded = dash.seeded
    before = len(_audit(dash))
    response = dash.client.get(
        f"/dashboard/connections/{seeded.connection_id}/records",
        params={"type": "Patient"},
        headers={"hx-request": "true"},
    )
    assert response.status_code == 200
    assert "Doe" in response.text
    assert "<html" not in response.text
    rows = _audit(dash)
    assert len(rows) == before + 1
    row = rows[-1]
    assert (row.actor_kind, row.actor_name, row.action, row.target_type, row.target_id) == (
        "user",
        USERNAME,
        "dashboard.records.view",
        "connection",
        seeded.connection_id,
    )
    assert row.path == f"/dashboard/connections/{seeded.connection_id}/records"
    full = dash.client.get(
        f"/dashboard/connections/{seeded.connection_id}/records", params={"type": "Observation"}
    )
    assert full.status_code == 200 and "o2" in full.text and "<html" in full.text
    # Each record leads with its display text and date (code and value for an Observation).
    assert '<span class="record-text">Heart rate = 72 /min</span>' in full.text
    assert '<span class="record-date">2024-05-01T10:00:00Z</span>' in full.text


def test_records_are_paged_by_id(dash: Dash) -> None:
    login(dash.client)
    from ehi_bridge.dashboard import repository as repo

    with dash.db.read_session() as session:
        first, after = repo.list_resources(
            session, dash.seeded.connection_id, "Observation", 0, limit=1
        )
        assert [r.resource_id for r in first] == ["o1"] and after is not None
        second, done = repo.list_resources(
            session, dash.seeded.connection_id, "Observation", after, limit=1
        )
        assert [r.resource_id for r in second] == ["o2"] and done is None


def test_events_page_filters(dash: Dash) -> None:
    login(dash.client)
    page = dash.client.get("/dashboard/events")
    assert page.status_code == 200
    assert "webhook.test" in page.text and "patient.ehi_export_failed" in page.text
    parked = dash.client.get("/dashboard/events", params={"status": "parked"})
    assert "patient.ehi_export_failed" in parked.text and "webhook.test" not in parked.text
    typed = dash.client.get("/dashboard/events", params={"type": "webhook.test"})
    assert "webhook.test" in typed.text and "patient.ehi_export_failed" not in typed.text
    by_conn = dash.client.get(
        "/dashboard/events", params={"org_connection_id": dash.seeded.org_connection_id}
    )
    assert "patient.connection_success" in by_conn.text and "webhook.test" not in by_conn.text


def test_replay_button_requeues_the_event(dash: Dash) -> None:
    csrf = login(dash.client)
    event_id = dash.seeded.parked_event_id
    response = dash.client.post(
        "/dashboard/events/replay",
        data={"ids": str(event_id), "csrf_token": csrf},
        follow_redirects=False,
    )
    assert response.status_code == 303
    with dash.db.read_session() as session:
        event = session.get(InboxEvent, event_id)
        assert event is not None
        assert event.status == "received"
        assert event.replays == 1
        assert event.last_error is None
    rows = _audit(dash)
    assert (rows[-1].action, rows[-1].target_type, rows[-1].target_id) == (
        "dashboard.event.replay",
        "event",
        str(event_id),
    )


def test_replay_over_htmx_returns_the_updated_row(dash: Dash) -> None:
    csrf = login(dash.client)
    event_id = dash.seeded.parked_event_id
    response = dash.client.post(
        "/dashboard/events/replay",
        data={"ids": str(event_id)},
        headers={"hx-request": "true", "x-csrf-token": csrf},
    )
    assert response.status_code == 200
    assert f'id="event-{event_id}"' in response.text
    assert "s-received" in response.text
    assert (
        dash.client.post("/dashboard/events/replay", data={"csrf_token": csrf}).status_code == 422
    )


def test_failures_page_lists_parked_failed_and_alerts(dash: Dash) -> None:
    login(dash.client)
    response = dash.client.get("/dashboard/failures")
    assert response.status_code == 200
    html = response.text
    assert f'id="event-{dash.seeded.parked_event_id}"' in html
    assert "token_refresh_failure" in html
    assert "export failed: token_refresh_failure" in html


def test_request_export_and_retry_buttons(dash: Dash) -> None:
    csrf = login(dash.client)
    seeded = dash.seeded
    response = dash.client.post(
        f"/dashboard/connections/{seeded.connection_id}/export",
        data={"csrf_token": csrf},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"].endswith("notice=export_requested")
    with dash.db.read_session() as session:
        exports = list(
            session.scalars(select(Export).where(Export.connection_id == seeded.connection_id))
        )
    requested = [e for e in exports if e.id not in seeded.export_ids]
    assert len(requested) == 1 and requested[0].trigger == "manual"
    # Retrying while one is active returns the active one (no duplicate export).
    retry = dash.client.post(
        f"/dashboard/exports/{seeded.failed_export_id}/retry",
        data={"csrf_token": csrf},
        follow_redirects=False,
    )
    assert retry.status_code == 303
    with dash.db.read_session() as session:
        count = len(
            list(
                session.scalars(select(Export).where(Export.connection_id == seeded.connection_id))
            )
        )
    assert count == 3
    actions = [r.action for r in _audit(dash)]
    assert "dashboard.export.request" in actions and "dashboard.export.retry" in actions


def test_request_export_of_a_revoked_connection_is_a_conflict(dash: Dash) -> None:
    csrf = login(dash.client)
    with dash.db.read_session() as session:
        revoked = session.scalars(select(Connection).where(Connection.status == "revoked")).one()
    response = dash.client.post(
        f"/dashboard/connections/{revoked.id}/export", data={"csrf_token": csrf}
    )
    assert response.status_code == 409
    assert "not authorized" in response.text
    assert "<html" in response.text
    page = dash.client.get(f"/dashboard/connections/{revoked.id}").text
    assert 'id="request-export" disabled' in page


def test_static_assets_are_served_and_others_are_not(dash: Dash) -> None:
    for name in ("htmx.min.js", "chart.umd.min.js", "dashboard.js", "dashboard.css"):
        assert dash.client.get(f"/dashboard/static/{name}").status_code == 200
    assert dash.client.get("/dashboard/static/..%2Fendpoints.py").status_code == 404
    assert dash.client.get("/dashboard/static/htmx.LICENSE.txt").status_code == 404


def test_chart_data_counts_are_right(dash: Dash) -> None:
    import html as html_lib
    import json
    import re

    login(dash.client)
    page = dash.client.get("/dashboard").text
    match = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', page, re.S)
    assert match
    charts = json.loads(html_lib.unescape(match.group(1)))
    histogram = dict(zip(charts["histogram"]["labels"], charts["histogram"]["values"], strict=True))
    assert histogram["30-60 min"] == 1  # authorized 2 h ago, records 75 min ago
    assert sum(histogram.values()) == 1
    exports = dict(zip(charts["exports"]["labels"], charts["exports"]["values"], strict=True))
    assert exports == {"complete": 1, "failed": 1}
    failures = dict(zip(charts["failures"]["labels"], charts["failures"]["values"], strict=True))
    assert failures == {
        "export token_refresh_failure": 1,
        "parked patient.ehi_export_failed": 1,
    }
    series = {s["name"]: sum(s["values"]) for s in charts["deliveries"]["series"]}
    assert series == {
        "patient.connection_success": 1,
        "patient.ehi_export_success": 1,
        "patient.ehi_export_failed": 1,
        "webhook.test": 1,
    }
    assert len(charts["deliveries"]["labels"]) in (48, 49)


def test_connect_link_page_makes_a_working_audited_link(dash: Dash) -> None:
    from urllib.parse import parse_qs, urlsplit

    from ehi_bridge.auth.connect_links import read_connect_token

    csrf = login(dash.client)
    assert dash.client.get("/dashboard/connect-link").status_code == 200
    assert (
        dash.client.post("/dashboard/connect-link", data={"external_id": "p-9"}).status_code == 403
    )
    response = dash.client.post(
        "/dashboard/connect-link",
        data={"external_id": "p-9", "ttl_hours": "1", "csrf_token": csrf},
    )
    assert response.status_code == 200
    import re

    match = re.search(r'id="connect-link" class="mono small" href="([^"]+)"', response.text)
    assert match
    url = urlsplit(match.group(1).replace("&amp;", "&"))
    assert url.path == "/connect"
    token = parse_qs(url.query)["token"][0]
    assert read_connect_token(dash.settings, token) == "p-9"
    assert dash.client.get("/connect", params={"token": token}).status_code == 200
    row = _audit(dash)[-1]
    assert (row.action, row.target_type, row.target_id) == (
        "dashboard.connect_link.create",
        "external_id",
        "p-9",
    )


def test_filter_choices_come_from_the_data(dash: Dash) -> None:
    from ehi_bridge.dashboard import repository as repo

    with dash.db.read_session() as session:
        assert repo.distinct_values(session, Connection.platform_type) == ["cerner", "epic"]
        assert repo.distinct_values(session, Connection.status) == ["authorized", "revoked"]
    login(dash.client)
    html = dash.client.get("/dashboard/connections").text
    assert "<option >cerner</option>" in html or "<option>cerner</option>" in html


def test_open_event_counts_cover_only_unfinished_events(dash: Dash) -> None:
    from ehi_bridge.dashboard import repository as repo

    with dash.db.read_session() as session:
        assert repo.open_event_counts(session) == {"received": 0, "retry": 0, "parked": 1}


def test_large_resources_are_previewed_not_loaded_whole(dash: Dash) -> None:
    import hashlib

    import orjson

    from ehi_bridge.dashboard import repository as repo
    from ehi_bridge.dashboard.service import pretty_resource
    from ehi_bridge.records.models import Resource

    big = orjson.dumps(
        {"resourceType": "Binary", "id": "b1", "data": "A" * (repo.RAW_PREVIEW_BYTES * 2)}
    )
    with dash.db.session() as session:
        session.add(
            Resource(
                connection_id=dash.seeded.connection_id,
                resource_type="Binary",
                resource_id="b1",
                raw=big,
                content_hash=hashlib.sha256(big).digest(),
                ingested_at=utcnow(),
            )
        )
    with dash.db.read_session() as session:
        (row,), _ = repo.list_resources(session, dash.seeded.connection_id, "Binary", 0)
        (small,), _ = repo.list_resources(session, dash.seeded.connection_id, "Patient", 0)
    assert row.size == len(big)
    assert len(row.head) == repo.RAW_PREVIEW_BYTES
    assert pretty_resource(row).endswith(f"(first {repo.RAW_PREVIEW_BYTES} of {len(big)} bytes)")
    assert '"family": "Doe"' in pretty_resource(small)


def test_replay_all_parked_from_the_failures_page(dash: Dash) -> None:
    import re

    csrf = login(dash.client)
    html = dash.client.get("/dashboard/failures").text
    end = html.index('id="replay-all-parked"')
    form = html[html.rindex("<form", 0, end) : end]
    ids = re.findall(r'name="ids" value="(\d+)"', form)
    assert ids == [str(dash.seeded.parked_event_id)]
    response = dash.client.post(
        "/dashboard/events/replay", data={"ids": ids, "csrf_token": csrf}, follow_redirects=False
    )
    assert response.status_code == 303
    assert "No parked events." in dash.client.get("/dashboard/failures").text
