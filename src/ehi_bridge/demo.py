"""``ehi-bridge demo``: the service and the Fasten simulator on SQLite, with sample patients.

Everything goes through the real paths: the simulator signs and POSTs webhooks to the
service, the service requests exports over HTTP, downloads them through the signed redirect
and ingests them. Nothing to install or configure; Ctrl-C stops both.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import uvicorn
from pydantic import SecretStr
from rich.console import Console
from sqlalchemy import select, text

from ehi_bridge import stats
from ehi_bridge.auth.connect_links import make_connect_link
from ehi_bridge.auth.service import create_api_token, create_user
from ehi_bridge.config import Settings
from ehi_bridge.db.migrate import ensure_schema
from ehi_bridge.exports.models import Export
from ehi_bridge.exports.state import ExportStatus
from ehi_bridge.server import Service
from ehi_bridge.simulator.config import SimulatorConfig
from ehi_bridge.simulator.datasets import patient_count
from ehi_bridge.simulator.server import SimulatorServer

console = Console(highlight=False, soft_wrap=True)
FINISHED = (*ExportStatus.DONE, ExportStatus.FAILED, ExportStatus.EXPIRED)


@dataclass
class DemoAccess:
    base_url: str
    username: str
    password: str
    api_token: str


def cli_path() -> str:
    """How to run ``ehi-bridge`` from here: its bare name when the shell finds this very
    script on the PATH, else its path (``.venv/bin/ehi-bridge`` after ``make demo``)."""
    script = Path(sys.executable).with_name("ehi-bridge")
    if not script.exists():
        return f"{sys.executable} -m ehi_bridge"
    found = shutil.which("ehi-bridge")
    if found is not None and Path(found).resolve() == script.resolve():
        return "ehi-bridge"
    with contextlib.suppress(ValueError):
        return str(script.absolute().relative_to(Path.cwd()))
    return str(script.absolute())


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _settings(data_dir: Path, port: int, sim: SimulatorServer, test_secret: str) -> Settings:
    mode = sim.config.modes["test"]
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        database_url=f"sqlite:///{(data_dir / 'ehi-bridge.sqlite3').resolve()}",
        test_webhook_secrets=[SecretStr(test_secret)],
        test_public_id=mode.public_id,
        test_private_key=SecretStr(mode.private_key),
        fasten_api_url=sim.fasten_api_url,
        # The simulator's signed storage URLs: same host as its API, another port.
        download_allowed_hosts=[urlsplit(sim.storage_url).netloc],
        public_api_docs=True,  # a local demo: the OpenAPI page it prints opens without a token
        stitch_js_url=sim.stitch_js_url,
        session_secret=[SecretStr(secrets.token_urlsafe(32))],
        connect_link_secret=[SecretStr(secrets.token_urlsafe(32))],
        public_base_url=f"http://127.0.0.1:{port}",
        log_level="WARNING",
    )


def _credentials(service: Service) -> tuple[str, str, str]:
    username, password = f"admin-{secrets.token_hex(2)}", secrets.token_urlsafe(12)
    with service.db.session() as session:
        create_user(session, username, password)
        _, token = create_api_token(session, f"demo-{secrets.token_hex(3)}")
    return username, password, token


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the service did not start")


def _export_statuses(service: Service) -> list[str]:
    with service.db.read_session() as session:
        return list(session.scalars(select(Export.status)))


def run_demo(
    port: int = 8000,
    data_dir: Path = Path("./data/demo"),
    patients: int = 3,
    exit_when_done: bool = False,
) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    test_secret = _secret()
    base = f"http://127.0.0.1:{port}"
    sim_config = SimulatorConfig.for_tests(
        webhook_url_test=f"{base}/webhooks/fasten/test",
        test_secret=test_secret,
        default_export_delay_seconds=2.0,
    )
    with SimulatorServer(sim_config) as sim:
        settings = _settings(data_dir, port, sim, test_secret)
        ensure_schema(settings.resolved_database_url)
        service = Service(settings)
        server = uvicorn.Server(
            uvicorn.Config(
                service,
                host="127.0.0.1",
                port=port,
                lifespan="on",
                log_config=None,
                access_log=False,
                log_level="warning",
            )
        )
        result: dict[str, int] = {"landed": 0}

        def drive() -> None:
            _wait_ready(f"{base}/healthz")
            username, password, token = _credentials(service)
            console.print(f"[bold]ehi-bridge[/] is up at {base}  (Fasten simulator: {sim.api_url})")
            before = len(_export_statuses(service))
            for index in range(patients):
                # More patients than the sample has: the sample's patients again, in turn.
                sim.sim.connect(
                    external_id=f"demo-user-{index + 1}", patient_index=index % patient_count()
                )
            console.print(f"connected {patients} simulated patients; waiting for their records…")
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                statuses = _export_statuses(service)[before:]
                if len(statuses) >= patients and all(s in FINISHED for s in statuses):
                    break
                time.sleep(0.5)
            statuses = _export_statuses(service)[before:]
            result["landed"] = sum(s in ExportStatus.DONE for s in statuses)
            with service.db.read_session() as session:
                counts = stats.collect(lambda sql: session.execute(text(sql)).all())
            console.print(
                f"records landed for {result['landed']}/{patients} patients: "
                f"{counts['resources']} FHIR resources, {counts['deliveries']} webhook deliveries"
            )
            console.print(
                f"  dashboard  {base}/dashboard   user [bold]{username}[/] "
                f"password [bold]{password}[/]"
            )
            console.print(
                f"  API        curl -H 'Authorization: Bearer {token}' {base}/api/connections"
            )
            console.print(f"  OpenAPI    {base}/docs")
            link = make_connect_link(settings, "demo-user-new", ttl=24 * 3600)
            console.print(f"  connect    {link}")
            console.print(
                f"  stats      EHI_DATABASE_URL={settings.resolved_database_url} {cli_path()} stats"
            )
            if exit_when_done:
                server.should_exit = True
            else:
                console.print("Ctrl-C stops the demo.")

        threading.Thread(target=drive, name="demo-driver", daemon=True).start()
        server.run()
    return 0 if result["landed"] == patients else 1
