"""`ehi-bridge simulator serve` as a real process, configured by the service's EHI_* env."""

from __future__ import annotations

import base64
import signal
from pathlib import Path

import httpx
from standardwebhooks import Webhook

from tests.integration.simulator.conftest import Receiver, wait_until
from tests.integration.simulator.smart_flow import login
from tests.support import ehi_command, free_port, running

SECRET = "whsec_" + base64.b64encode(b"serve-cli-secret").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"serve-cli-old-secret").decode()


def test_serve_uses_the_service_settings(receiver: Receiver, tmp_path: Path) -> None:
    port, storage_port = free_port(), free_port()
    env = {
        "EHI_TEST_PUBLIC_ID": "public_test_cli",
        "EHI_TEST_PRIVATE_KEY": "private_test_cli",
        "EHI_TEST_WEBHOOK_SECRETS": f"{SECRET},{OLD_SECRET}",
        "EHI_LIVE_PUBLIC_ID": "public_live_cli",
        "EHI_LIVE_PRIVATE_KEY": "private_live_cli",
        "EHI_LIVE_WEBHOOK_SECRETS": OLD_SECRET,
    }
    args = ehi_command(
        "simulator",
        "serve",
        "--port",
        str(port),
        "--storage-port",
        str(storage_port),
        "--webhook-url-test",
        receiver.url,
        "--export-delay",
        "0.1",
    )
    api = f"http://127.0.0.1:{port}"
    with running(args, env, f"{api}/healthz", tmp_path / "simulator.log") as proc:
        conn = httpx.post(f"{api}/_sim/connections", json={"external_id": "cli-user"}).json()[0]
        wait_until(lambda: receiver.received)
        event = Webhook(SECRET).verify(receiver.received[0].body, receiver.received[0].headers)
        assert event["data"]["external_id"] == "cli-user"

        auth = ("public_test_cli", "private_test_cli")
        task = httpx.post(
            f"{api}/v1/bridge/fhir/ehi-export",
            json={"org_connection_id": conn["org_connection_id"]},
            auth=auth,
        ).json()["data"]["task_id"]
        wait_until(lambda: len(receiver.received) >= 2)
        download = httpx.get(
            f"{api}/v1/bridge/fhir/ehi-export/{task}/download/export-1.jsonl", auth=auth
        )
        assert download.status_code == 302
        assert download.headers["location"].startswith(f"http://localhost:{storage_port}/")
        assert httpx.get(download.headers["location"]).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    log = (tmp_path / "simulator.log").read_text()
    assert "private_test_cli" not in log and SECRET not in log
    assert "X-Sim-Signature" not in log


def test_smart_command_serves_the_sandbox(tmp_path: Path) -> None:
    port = free_port()
    args = ehi_command("simulator", "smart", "--port", str(port), "--access-token-ttl", "60")
    origin = f"http://127.0.0.1:{port}"
    ready = f"{origin}/epic/fhir/.well-known/smart-configuration"
    with running(args, {}, ready, tmp_path / "smart.log") as proc:
        config = httpx.get(ready).json()
        assert config["token_endpoint"] == f"{origin}/epic/oauth/token"
        patient_id = httpx.get(f"{origin}/_smart/patients").json()[0]["id"]
        with httpx.Client() as http:
            token = login(http, origin, "epic", patient_id)
        assert token["expires_in"] == 60
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    log = (tmp_path / "smart.log").read_text()
    assert token["access_token"] not in log and token["refresh_token"] not in log
