"""The SMART sandbox's pure FHIR side: quirk rules, page tokens, paging, bundles."""

from __future__ import annotations

import orjson
import pytest

from ehi_bridge.simulator.smart import fhir
from ehi_bridge.simulator.smart.store import Doc, default_store

P = {"patient": "abc"}


@pytest.mark.parametrize(
    ("profile", "rtype", "params", "refused"),
    [
        ("generic", "Observation", {}, False),
        ("generic", "Condition", {"foo": "bar"}, False),
        ("epic", "Observation", P, True),
        ("epic", "Observation", {**P, "category": "laboratory"}, False),
        ("epic", "Condition", {**P, "foo": "bar"}, True),
        ("epic", "Condition", {**P, "_count": "10", "_page_token": "x"}, False),
        ("epic", "Condition", {**P, "_revinclude": "Provenance:target"}, True),
        ("cerner", "Condition", {}, True),
        ("cerner", "Condition", {"category": "x"}, True),
        ("cerner", "Condition", P, False),
        ("cerner", "Condition", {"subject": "Patient/abc"}, False),
        ("cerner", "Practitioner", {"identifier": "sys|1"}, False),
        ("cerner", "Patient", {"_id": "abc"}, False),
        ("cerner", "Condition", {"_id": "abc"}, True),
        ("athena", "MedicationRequest", P, True),
        ("athena", "MedicationRequest", {**P, "intent": "order"}, False),
        ("athena", "Condition", P, False),
    ],
)
def test_search_quirks(profile: str, rtype: str, params: dict[str, str], refused: bool) -> None:
    assert (fhir.search_quirk(profile, rtype, params) is not None) is refused


def test_only_generic_has_everything() -> None:
    assert fhir.everything_supported("generic")
    assert not any(fhir.everything_supported(p) for p in ("epic", "cerner", "athena"))


def test_page_tokens_round_trip_and_are_bound_to_their_search() -> None:
    key = fhir.search_key("generic", "Condition", "abc", "50")
    token = fhir.encode_page_token(150, key)
    assert "150" not in token  # opaque, not a bare offset
    assert fhir.decode_page_token(token, key) == 150
    other = fhir.search_key("generic", "Procedure", "abc", "50")
    with pytest.raises(fhir.FhirError) as caught:
        fhir.decode_page_token(token, other)
    assert caught.value.status == 400
    for garbage in ("", "!!!", "bm9kb3Q", fhir.encode_page_token(-1, key)):
        with pytest.raises(fhir.FhirError):
            fhir.decode_page_token(garbage, key)


def test_page_size_default_and_bounds() -> None:
    assert fhir.page_size({}) == 50
    assert fhir.page_size({"_count": "7"}) == 7
    assert fhir.page_size({"_count": "0"}) == 1
    assert fhir.page_size({"_count": "100000"}) == 1000
    with pytest.raises(fhir.FhirError):
        fhir.page_size({"_count": "ten"})


def _docs(n: int) -> list[Doc]:
    return [
        Doc("Condition", f"c{i}", b'{"resourceType":"Condition","id":"c%d"}' % i) for i in range(n)
    ]


def test_paginate_covers_everything_once_in_order() -> None:
    docs = _docs(7)
    seen: list[Doc] = []
    offset: int | None = 0
    while offset is not None:
        page = fhir.paginate(docs, offset, 3)
        assert page.total == 7
        seen.extend(page.docs)
        offset = page.next_offset
    assert seen == docs
    assert fhir.paginate(docs, 6, 1).next_offset is None
    assert fhir.paginate(docs, 100, 3).docs == []


def test_page_url_replaces_the_token_and_keeps_the_rest() -> None:
    query = [("patient", "abc"), ("_count", "2"), ("_page_token", "old")]
    assert fhir.page_url("http://h/f/Condition", query, "new") == (
        "http://h/f/Condition?patient=abc&_count=2&_page_token=new"
    )
    assert fhir.page_url("http://h/f/Condition", [], None) == "http://h/f/Condition"


def test_searchset_holds_each_resource_byte_for_byte() -> None:
    odd = b'{"resourceType":"Condition","id":"x",  "note" : [{"text":"\\u00e9"}]}'
    doc = Doc("Condition", "x", odd)
    body = fhir.searchset(
        "http://h/generic/fhir",
        [(doc, "match")],
        total=1,
        self_url="http://h/self",
        next_url="http://h/next",
    )
    assert odd in body
    bundle = orjson.loads(body)
    assert bundle["type"] == "searchset"
    assert bundle["entry"][0]["fullUrl"] == "http://h/generic/fhir/Condition/x"
    assert {link["relation"]: link["url"] for link in bundle["link"]} == {
        "self": "http://h/self",
        "next": "http://h/next",
    }


def test_search_filters_by_token_params() -> None:
    store = default_store()
    records = store.patients[0]
    conditions = fhir.search(records, "Condition", {})
    assert conditions and len(conditions) == len(records.by_type["Condition"])
    diagnoses = fhir.search(records, "Condition", {"category": "encounter-diagnosis"})
    assert diagnoses and all("encounter-diagnosis" in d.facets.category for d in diagnoses)
    assert fhir.search(records, "Condition", {"category": "nonsense"}) == []
    orders = fhir.search(records, "MedicationRequest", {"intent": "order,plan"})
    assert len(orders) == len(records.by_type["MedicationRequest"])
    assert fhir.search(records, "MedicationRequest", {"intent": "proposal"}) == []
    one = conditions[0]
    assert fhir.search(records, "Condition", {"_id": f"zzz,{one.id}"}) == [one]
    assert fhir.search(records, "Observation", {}) == []


def test_conditional_references_resolve_by_identifier() -> None:
    records = default_store().patients[0]
    practitioner = records.by_type["Practitioner"][0]
    npi = next(i for i in practitioner.facets.identifiers if i.startswith("http://hl7.org"))
    assert fhir.search(records, "Practitioner", {"identifier": npi}) == [practitioner]
