"""The source console (``ehi-bridge sources console``) in headless Chromium against each
profile of the simulator's SMART sandbox: the custom-source form, the sandbox's consent
page, the callback page (code, token answer, patient), a FHIR GET, "sync all" into NDJSON
(equal to the sandbox's listing for the patient) and saving the registration."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehi_bridge.config import Settings
from ehi_bridge.simulator.smart.server import SmartSandbox
from ehi_bridge.sources.console.endpoints import create_console_app
from ehi_bridge.sources.console.service import Console
from ehi_bridge.sources.definitions import definitions, use_user_definitions
from tests.e2e.browser.conftest import ThreadedServer, save_screenshot

pytestmark = [pytest.mark.browser]


@dataclass
class LiveConsole:
    url: str
    sandbox: str
    console: Console
    definitions_file: Path

    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = httpx.request(method, f"{self.sandbox}/_smart{path}", timeout=10, **kwargs)
        assert answer.status_code < 300, answer.text
        return answer.json()

    def smallest_patient(self) -> str:
        patients = self.control("GET", "/patients")
        return str(min(patients, key=lambda p: p["resource_count"])["id"])


@pytest.fixture(scope="module")
def live_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveConsole]:
    tmp = tmp_path_factory.mktemp("console")
    defs = tmp / "definitions.json"
    use_user_definitions(defs)
    with SmartSandbox() as box:
        console = Console(
            Settings(data_dir=tmp / "data"),
            sandbox_url=box.url,
            out_dir=tmp / "out",
            definitions_file=defs,
        )
        with ThreadedServer(create_console_app(console)) as server:
            yield LiveConsole(server.base_url, box.url, console, defs)
    use_user_definitions(None)


# profile → (token endpoint auth, response mode, client id, client secret)
CASES = {
    "generic": ("none", "fragment", "ehi-public", ""),
    "epic": ("private_key_jwt", "query", "console-epic", ""),
    "cerner": ("none", "query", "ehi-public", ""),
    "athena": ("client_secret_basic", "fragment", "ehi-confidential", "sandbox-secret"),
}


@pytest.mark.parametrize("profile", list(CASES))
def test_custom_source_oauth_and_sync_all(
    profile: str, live_console: LiveConsole, page: Any, tmp_path: Path
) -> None:
    live = live_console
    auth, mode, client_id, secret = CASES[profile]
    if auth == "private_key_jwt":  # the registration points at the console's public key
        live.control(
            "POST",
            "/clients",
            json={
                "client_id": client_id,
                "profile": profile,
                "auth_method": "private_key_jwt",
                "jwks": live.console.signing_key.public_jwks(),
                "redirect_uris": [f"{live.url}/callback"],
            },
        )
    patient_id = live.smallest_patient()
    source_type = f"my-{profile}"

    page.goto(live.url + "/")
    page.fill("#source_type", source_type)
    page.fill("#authorization_endpoint", f"{live.sandbox}/{profile}/oauth/authorize")
    page.fill("#token_endpoint", f"{live.sandbox}/{profile}/oauth/token")
    page.select_option("#token_auth", auth)
    page.select_option("#response_mode", mode)
    page.fill("#client_id", client_id)
    page.fill("#client_secret", secret)
    page.fill("#fhir_base_url", f"{live.sandbox}/{profile}/fhir")
    page.select_option("#quirks", profile)
    page.fill("#requests_per_second", "0")  # the sandbox needs no pacing
    page.click("#start-custom")

    # The sandbox's consent page.
    page.wait_for_url(re.compile(rf"/{profile}/oauth/authorize"))
    page.select_option("#patient", patient_id)
    page.click("#allow")

    # The callback page: code, masked token answer, scopes, patient.
    page.wait_for_url(re.compile(r"/s/[^/]+$"))
    assert page.locator("#auth-code").inner_text().strip()
    assert page.locator("#patient-id").inner_text() == patient_id
    assert "patient/*.read" in page.locator("#granted-scopes").inner_text()
    masked = page.locator("#access-token").inner_text()
    assert "•" in masked
    page.click("#reveal-access")
    deadline = time.monotonic() + 10  # (a JS predicate would be refused by the page's CSP)
    while "•" in (access := page.locator("#access-token").inner_text()):
        assert time.monotonic() < deadline, "the token was not revealed"
        page.wait_for_timeout(50)
    assert len(access) > 16 and access[:4] == masked[:4]
    assert "•" in page.locator("#refresh-token").inner_text()  # offline_access was granted

    # Fetch the Patient; one GET of our choice, shown raw.
    page.click("#fetch-patient")
    page.locator("#result-code").wait_for()
    assert page.locator("#result-code").inner_text() == "200"
    patient = json.loads(page.locator("#result-raw").text_content())
    assert patient["resourceType"] == "Patient" and patient["id"] == patient_id
    page.fill("#get-path", f"Encounter?patient={patient_id}&_count=1")
    page.click("#get-run")
    page.locator("#result-status", has_text="Encounter?").wait_for()
    assert json.loads(page.locator("#result-raw").text_content())["resourceType"] == "Bundle"

    # Sync all: an NDJSON file with exactly the sandbox's resources for this patient.
    page.click("#sync-all")
    page.locator("#sync-done").wait_for(timeout=45_000)
    path = Path(page.locator("#sync-file").inner_text())
    lines = path.read_bytes().splitlines()
    got = [(json.loads(line)["resourceType"], json.loads(line)["id"]) for line in lines]
    expected = {tuple(x) for x in live.control("GET", f"/patients/{patient_id}/resources")}
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert int(page.locator("#sync-total").inner_text()) == len(expected)
    assert page.locator("#sync-summary tbody tr").count() == len({t for t, _ in expected})
    assert page.locator("#sync-problems").count() == 0

    # Save as a platform definition: the registration becomes data.
    page.click("#save-definition")
    page.locator("#save-done").wait_for()
    saved = {p["id"]: p for p in json.loads(live.definitions_file.read_text())}
    assert saved[source_type]["token_auth"] == auth
    assert saved[source_type]["default_client_id"] == client_id
    assert "sandbox-secret" not in live.definitions_file.read_text()
    assert definitions().platform(source_type).token_endpoint == (
        f"{live.sandbox}/{profile}/oauth/token"
    )
    save_screenshot(page, tmp_path, f"console-{profile}.png")
