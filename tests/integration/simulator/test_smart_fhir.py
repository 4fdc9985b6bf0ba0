"""The SMART sandbox's FHIR API over real HTTP: reads byte for byte, search paging,
$everything, Binary, each profile's quirks, and the resources listing for reconciliation."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from ehi_bridge.simulator.smart.server import US_CORE_TYPES, SmartSandbox
from tests.integration.simulator.smart_flow import login


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


class Session:
    def __init__(self, http: httpx.Client, smart: SmartSandbox, profile: str, index: int) -> None:
        self.http = http
        self.smart = smart
        self.base = smart.fhir_base(profile)
        self.patient_id: str = http.get(f"{smart.url}/_smart/patients").json()[index]["id"]
        token = login(http, smart.url, profile, self.patient_id)
        self.headers = {"Authorization": f"Bearer {token['access_token']}"}

    def get(self, path_or_url: str, **params: Any) -> httpx.Response:
        url = path_or_url if path_or_url.startswith("http") else f"{self.base}/{path_or_url}"
        return self.http.get(url, params=params or None, headers=self.headers)

    def all_pages(self, path: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
        """Every entry, following next links (with a loop guard); and the page count."""
        entries: list[dict[str, Any]] = []
        answer = self.get(path, **params)
        seen: set[str] = set()
        pages = 0
        while True:
            assert answer.status_code == 200, answer.text
            bundle = answer.json()
            pages += 1
            entries.extend(bundle.get("entry", []))
            nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not nxt:
                return entries, pages
            assert nxt[0] not in seen, "paging loop"
            seen.add(nxt[0])
            answer = self.get(nxt[0])

    def listing(self) -> list[tuple[str, str]]:
        answer = self.http.get(f"{self.smart.url}/_smart/patients/{self.patient_id}/resources")
        return [(t, i) for t, i in answer.json()]


def _keys(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries]


def test_reads_are_the_stored_bytes(http: httpx.Client, smart: SmartSandbox) -> None:
    s = Session(http, smart, "generic", 1)
    records = smart.box.store.patient(s.patient_id)
    assert records is not None
    for doc in records.docs[:40]:
        answer = s.get(f"{doc.rtype}/{doc.id}", _format="json") if doc.rtype != "Binary" else None
        if answer is None:
            continue
        assert answer.status_code == 200
        assert answer.content == doc.render(s.base)
    assert s.get("Condition/does-not-exist").status_code == 404


def test_search_pages_through_everything_once(http: httpx.Client, smart: SmartSandbox) -> None:
    s = Session(http, smart, "generic", 1)
    records = smart.box.store.patient(s.patient_id)
    assert records is not None
    expected = [d.key for d in records.by_type["Procedure"]]
    assert len(expected) > 7
    entries, pages = s.all_pages("Procedure", patient=s.patient_id, _count=7)
    assert _keys(entries) == expected
    assert pages == -(-len(expected) // 7)
    first = s.get("Procedure", patient=s.patient_id, _count=7).json()
    assert first["total"] == len(expected)
    assert first["entry"][0]["fullUrl"] == f"{s.base}/Procedure/{expected[0][1]}"
    # Raw bytes inside the bundle.
    assert (
        records.by_type["Procedure"][0].render(s.base)
        in s.get("Procedure", patient=s.patient_id, _count=7).content
    )
    # Deterministic: the same search gives the same bytes.
    assert (
        s.get("Procedure", patient=s.patient_id).content
        == s.get("Procedure", patient=s.patient_id).content
    )
    default = s.get("Procedure", patient=s.patient_id).json()
    assert len(default["entry"]) == min(50, len(expected))
    bad = s.get("Procedure", patient=s.patient_id, _page_token="garbage")
    assert bad.status_code == 400
    assert bad.json()["resourceType"] == "OperationOutcome"


def test_everything_and_the_listing_agree(http: httpx.Client, smart: SmartSandbox) -> None:
    s = Session(http, smart, "generic", 0)  # the largest patient
    listing = s.listing()
    entries, pages = s.all_pages(f"Patient/{s.patient_id}/$everything", _count=200)
    assert pages > 1
    assert _keys(entries) == listing
    assert len(set(listing)) == len(listing)
    types = {t for t, _ in listing}
    assert {"Patient", "Practitioner", "Organization", "Location", "PractitionerRole"} <= types
    assert {"Binary", "Medication", "DocumentReference"} <= types
    patients = http.get(f"{smart.url}/_smart/patients").json()
    assert patients[0]["resource_count"] == len(listing)


def test_searching_every_type_finds_exactly_the_listing(
    http: httpx.Client, smart: SmartSandbox
) -> None:
    s = Session(http, smart, "generic", 3)
    found: list[tuple[str, str]] = []
    for rtype in US_CORE_TYPES:
        params = {"_id": s.patient_id} if rtype == "Patient" else {"patient": s.patient_id}
        entries, _ = s.all_pages(rtype, **params)
        found.extend(_keys(entries))
    assert sorted(found) == sorted(s.listing())


def test_binary_answers_raw_content_or_fhir_json(http: httpx.Client, smart: SmartSandbox) -> None:
    s = Session(http, smart, "generic", 1)
    docs, _ = s.all_pages("DocumentReference", patient=s.patient_id)
    urls = [
        e["resource"]["content"][0]["attachment"].get("url")
        for e in docs
        if e["resource"]["content"][0]["attachment"].get("url")
    ]
    inline = [e for e in docs if "data" in e["resource"]["content"][0]["attachment"]]
    assert urls and inline  # both shapes occur
    assert all(u.startswith(f"{s.base}/Binary/") for u in urls)
    raw = http.get(urls[0], headers={**s.headers, "Accept": "*/*"})
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    resource = s.http.get(urls[0], headers={**s.headers, "Accept": "application/fhir+json"})
    assert resource.headers["content-type"].startswith("application/fhir+json")
    binary = resource.json()
    assert binary["resourceType"] == "Binary"
    assert base64.b64decode(binary["data"]) == raw.content


def test_contained_and_urn_uuid_references_are_served(
    http: httpx.Client, smart: SmartSandbox
) -> None:
    s = Session(http, smart, "generic", 0)
    requests, _ = s.all_pages("MedicationRequest", patient=s.patient_id, _count=500)
    contained = [e for e in requests if e["resource"].get("contained")]
    assert contained
    assert contained[0]["resource"]["medicationReference"] == {"reference": "#med"}
    linked = [
        e["resource"]["medicationReference"]["reference"]
        for e in requests
        if e["resource"]
        .get("medicationReference", {})
        .get("reference", "")
        .startswith("Medication/")
    ]
    assert linked
    medication = s.get(linked[0])
    assert medication.status_code == 200 and medication.json()["resourceType"] == "Medication"
    procedures, _ = s.all_pages("Procedure", patient=s.patient_id, _count=1000)
    assert any(b'"reference":"urn:uuid:' in orjson.dumps(e["resource"]) for e in procedures)


def test_conditional_references_resolve_by_search(http: httpx.Client, smart: SmartSandbox) -> None:
    s = Session(http, smart, "cerner", 1)
    encounters, _ = s.all_pages("Encounter", patient=s.patient_id)
    reference = encounters[0]["resource"]["participant"][0]["individual"]["reference"]
    rtype, _, query = reference.partition("?")
    assert rtype == "Practitioner"
    identifier = query.removeprefix("identifier=")
    found = s.get("Practitioner", identifier=identifier).json()
    assert [e["resource"]["resourceType"] for e in found["entry"]] == ["Practitioner"]


def test_epic_quirks(http: httpx.Client, smart: SmartSandbox) -> None:
    s = Session(http, smart, "epic", 1)
    no_category = s.get("Observation", patient=s.patient_id)
    assert no_category.status_code == 400
    assert no_category.json()["resourceType"] == "OperationOutcome"
    assert s.get("Observation", patient=s.patient_id, category="laboratory").status_code == 200
    assert s.get("Condition", patient=s.patient_id, _sort="date").status_code == 400
    assert s.get("Condition", patient=s.patient_id, category="problem-list-item").status_code == 200
    assert s.get(f"Patient/{s.patient_id}/$everything").status_code == 400


def test_cerner_quirks(http: httpx.Client, smart: SmartSandbox) -> None:
    s = Session(http, smart, "cerner", 1)
    assert s.get("Condition").status_code == 400
    assert s.get("Condition", patient=s.patient_id).status_code == 200
    assert s.get("Condition", _sort="date", patient=s.patient_id).status_code == 200
    assert s.get("Patient", _id=s.patient_id).status_code == 200
    assert s.get(f"Patient/{s.patient_id}/$everything").status_code == 400


def test_athena_quirks(http: httpx.Client, smart: SmartSandbox) -> None:
    s = Session(http, smart, "athena", 1)
    assert s.get("MedicationRequest", patient=s.patient_id).status_code == 400
    with_intent = s.get("MedicationRequest", patient=s.patient_id, intent="order")
    assert with_intent.status_code == 200 and with_intent.json()["total"] > 0
    assert s.get("Condition").status_code == 200  # the token's patient
    assert s.get(f"Patient/{s.patient_id}/$everything").status_code == 400


def test_generic_allows_it_all(http: httpx.Client, smart: SmartSandbox) -> None:
    s = Session(http, smart, "generic", 1)
    assert s.get("Observation", patient=s.patient_id).status_code == 200
    assert s.get("MedicationRequest", patient=s.patient_id, _sort="x").status_code == 200
    assert s.get("Condition").json()["total"] > 0
