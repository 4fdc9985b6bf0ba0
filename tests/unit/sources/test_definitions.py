from __future__ import annotations

import json
from pathlib import Path

import pytest

from ehi_bridge.sources.definitions import (
    CatalogError,
    definitions,
    load_catalog,
    sandbox_base_url,
)

REQUIRED = {
    "generic",
    "epic",
    "cerner",
    "athena",
    "nextgen",
    "eclinicalworks",
    "veradigm",
    "bluebutton",
    "va",
    "sandbox-generic",
    "sandbox-epic",
    "sandbox-cerner",
    "sandbox-athena",
}


def test_every_required_platform_is_defined_and_valid() -> None:
    platforms = {p.id: p for p in definitions().platforms}
    assert set(platforms) >= REQUIRED
    assert platforms["epic"].token_auth == "private_key_jwt"
    assert "Observation" in platforms["epic"].search_params
    assert platforms["cerner"].patient_param_on_every_search
    assert {"intent": "order"} in platforms["athena"].search_params["MedicationRequest"]
    for platform in platforms.values():
        assert platform.max_in_flight <= 5
        assert platform.discovery or (platform.authorize_endpoint and platform.token_endpoint)
        assert "offline_access" in platform.scopes or platform.id == "bluebutton"


def test_explicit_endpoints_are_built_on_the_fhir_base_origin() -> None:
    va = definitions().platform("va")
    base = "https://sandbox-api.va.gov/services/fhir/v0/r4"
    assert (
        va.endpoint(va.token_endpoint, base) == "https://sandbox-api.va.gov/oauth2/health/v1/token"
    )


def test_sandbox_profiles_take_their_base_from_the_setting() -> None:
    platform = definitions().platform("sandbox-epic")
    assert sandbox_base_url("http://127.0.0.1:8910/", platform) == "http://127.0.0.1:8910/epic/fhir"
    assert sandbox_base_url("", platform) is None
    assert sandbox_base_url("http://x", definitions().platform("epic")) is None


def test_a_catalog_file_adds_and_overrides_institutions(tmp_path: Path) -> None:
    extra = tmp_path / "catalog.json"
    extra.write_text(
        json.dumps(
            [
                {
                    "id": "my-hospital",
                    "name": "My Hospital",
                    "platform": "epic",
                    "fhir_base_url": "https://fhir.example.org/api/FHIR/R4/",
                },
                {
                    "id": "epic-sandbox",
                    "name": "Renamed",
                    "platform": "epic",
                    "fhir_base_url": "https://fhir.epic.com/interconnect-fhir-oauth/api/FHIR/R4",
                },
            ]
        )
    )
    entries = {e.id: e for e in load_catalog(extra)}
    assert entries["my-hospital"].fhir_base_url == "https://fhir.example.org/api/FHIR/R4"
    assert entries["epic-sandbox"].name == "Renamed"
    assert len(entries) == len(load_catalog()) + 1


@pytest.mark.parametrize(
    "content",
    [
        '{"id": "x"}',
        '[{"id": "x", "name": "X", "platform": "nope", "fhir_base_url": "https://x"}]',
        '[{"id": "x", "name": "X", "platform": "epic", "fhir_base_url": "ftp://x"}]',
        "not json",
    ],
)
def test_a_bad_catalog_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    extra = tmp_path / "catalog.json"
    extra.write_text(content)
    with pytest.raises(CatalogError):
        load_catalog(extra)
