from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ehi_bridge.app import create_api
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.ops import metrics
from tests.integration.api.factories import (
    TestClient,
    make_connection,
    make_event,
    make_export,
    test_settings,
)


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_ok(client: TestClient, db: Database) -> None:
    with db.session() as session:
        make_event(session, 1, status="received", received_at=utcnow())
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True,
        "migrations": True,
        "runtime": True,
        "inbox": True,
        "exports": True,
    }


def test_readyz_fails_on_old_unprocessed_event(client: TestClient, db: Database) -> None:
    with db.session() as session:
        make_event(session, 1, status="applied", received_at=utcnow() - timedelta(days=2))
        make_event(session, 2, status="retry", received_at=utcnow() - timedelta(hours=1))
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["inbox"]["ok"] is False
    assert checks["inbox"]["value"] >= 3600
    assert checks["database"]["ok"] is True


def test_readyz_runtime_heartbeat(client: TestClient) -> None:
    extras = client.app.state.ctx.extras  # type: ignore[attr-defined]
    extras["runtime_heartbeat"] = lambda: 1.5
    assert client.get("/readyz").status_code == 200
    extras["runtime_heartbeat"] = lambda: 3600.0
    stale = client.get("/readyz")
    assert stale.status_code == 503
    assert stale.json()["checks"]["runtime"]["ok"] is False
    extras["runtime_heartbeat"] = lambda: None
    assert client.get("/readyz").status_code == 503

    def broken() -> float:
        raise RuntimeError("boom")

    extras["runtime_heartbeat"] = broken
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["runtime"]["detail"] == "error: RuntimeError"


def test_readyz_schema_not_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"  # never migrated
    db = Database(url)
    try:
        with TestClient(create_api(test_settings(url, tmp_path), db)) as client:
            response = client.get("/readyz")
        assert response.status_code == 503
        checks = response.json()["checks"]
        assert checks["database"]["ok"] is True
        assert checks["migrations"]["ok"] is False
        assert checks["inbox"]["ok"] is False  # no inbox table: reported, not a crash
    finally:
        db.dispose()


def scrape(client: TestClient, **kwargs: object) -> dict[str, dict[tuple, float]]:
    response = client.get("/metrics", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def test_metrics(client: TestClient, db: Database) -> None:
    with db.session() as session:
        connection = make_connection(session, 1)
        for status in ("complete", "complete", "failed"):
            make_export(session, connection, status=status)
        make_event(session, 1, status="received", received_at=utcnow() - timedelta(seconds=90))
    metrics.deliveries_total.labels(type="webhook.test", outcome="stored").inc()
    metrics.alerts_sent_total.labels(kind="export_failed").inc()
    metrics.bytes_downloaded_total.inc(10)
    metrics.resources_ingested_total.inc(3)
    metrics.signature_failures_total.labels(mode="live").inc()
    samples = scrape(client)
    assert samples["ehi_bridge_exports_by_status"] == {
        (("status", "complete"),): 2.0,
        (("status", "failed"),): 1.0,
    }
    assert samples["ehi_bridge_processing_lag_seconds"][()] >= 90
    for name in (
        "ehi_bridge_deliveries_total",
        "ehi_bridge_signature_failures_total",
        "ehi_bridge_bytes_downloaded_total",
        "ehi_bridge_resources_ingested_total",
        "ehi_bridge_alerts_sent_total",
    ):
        assert samples[name], name
    key = (("outcome", "stored"), ("type", "webhook.test"))
    assert samples["ehi_bridge_deliveries_total"][key] >= 1


def test_metrics_token_setting(db: Database, database_url: str, tmp_path: Path) -> None:
    from ehi_bridge.auth.service import create_api_token

    with db.session() as session:
        _, plaintext = create_api_token(session, "prometheus")
    settings = test_settings(database_url, tmp_path, metrics_require_token=True)
    with TestClient(create_api(settings, db)) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert scrape(client, headers={"Authorization": f"Bearer {plaintext}"})
