"""The documents the SMART sandbox serves: Synthea lines untouched, derived ones as documented."""

from __future__ import annotations

import base64
from collections import Counter

import orjson
import pytest

from ehi_bridge.simulator import datasets
from ehi_bridge.simulator.smart import store as store_module
from ehi_bridge.simulator.smart.store import BASE_PLACEHOLDER, build_store, default_store, derive

BASE = "http://127.0.0.1:1/epic/fhir"


def test_untouched_documents_are_the_synthea_lines() -> None:
    store = default_store()
    source = {
        line for info in datasets.list_patients() for line in datasets.patient_lines(info.index)
    }
    untouched = [d for d in store.docs.values() if d.derived is None]
    assert len(untouched) > len(store.docs) // 2
    assert all(d.raw in source for d in untouched)


def test_the_store_holds_every_kind_of_derived_document() -> None:
    kinds = Counter(
        k for d in default_store().docs.values() for k in (d.derived or "").split(",") if k
    )
    for kind in ("binary", "contained", "medication", "urn_uuid", "from DocumentReference"):
        assert kinds[kind] > 0, kind


def test_document_reference_points_at_its_binary() -> None:
    store = default_store()
    doc = next(d for d in store.docs.values() if d.derived and "binary" in d.derived)
    served = orjson.loads(doc.render(BASE))
    attachment = served["content"][0]["attachment"]
    assert "data" not in attachment
    assert attachment["url"].startswith(BASE + "/Binary/")
    binary_id = attachment["url"].rsplit("/", 1)[1]
    binary = orjson.loads(store.docs[("Binary", binary_id)].raw)
    assert binary["contentType"] == attachment["contentType"]
    original = next(
        line
        for info in datasets.list_patients()
        for line in datasets.patient_lines(info.index)
        if f'"id":"{doc.id}"'.encode() in line[:120]
    )
    assert binary["data"] == orjson.loads(original)["content"][0]["attachment"]["data"]
    assert base64.b64decode(binary["data"])
    # The rest of the line is byte for byte the source's.
    assert doc.raw.split(b'"url":')[0] == original.split(b'"data":')[0]


def test_contained_medication_and_urn_uuid_references() -> None:
    store = default_store()
    contained = next(d for d in store.docs.values() if d.derived and "contained" in d.derived)
    resource = orjson.loads(contained.raw)
    assert resource["contained"][0]["resourceType"] == "Medication"
    assert resource["medicationReference"] == {"reference": "#med"}
    linked = next(
        d for d in store.docs.values() if d.derived and "medication" in d.derived.split(",")
    )
    ref = orjson.loads(linked.raw)["medicationReference"]["reference"]
    assert ("Medication", ref.split("/")[1]) in store.docs
    urn = next(d for d in store.docs.values() if d.derived and "urn_uuid" in d.derived)
    encounter_id = orjson.loads(urn.raw)["encounter"]["reference"].removeprefix("urn:uuid:")
    owner = next(iter(store.owners[urn.key]))
    assert ("Encounter", encounter_id) in store.patient(owner).keys  # type: ignore[union-attr]


def test_every_served_document_is_json_with_its_id() -> None:
    for doc in default_store().docs.values():
        resource = orjson.loads(doc.render(BASE))
        assert (resource["resourceType"], resource["id"]) == doc.key
        assert (BASE_PLACEHOLDER in doc.raw) is doc.templated


def test_derivation_is_deterministic() -> None:
    info = datasets.list_patients()[1]
    lines = list(datasets.patient_lines(info.index))
    first = build_store([(info, lines)])
    second = build_store([(info, lines)])
    assert [d.raw for d in first.patients[0].docs] == [d.raw for d in second.patients[0].docs]


def test_patient_records_start_with_the_patient_and_hold_their_references() -> None:
    store = default_store()
    for records in store.patients:
        assert records.docs[0].key == ("Patient", records.info.id)
        assert len(set(records.keys)) == len(records.docs)
        for doc in records.docs:
            assert records.info.id in store.owners[doc.key]


def test_other_lines_pass_through() -> None:
    line = b'{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/x"}}'
    assert derive(line) == (line, [], [])


@pytest.mark.parametrize(
    "text",
    [b'{"a":"}"}', b'{"a":["{",{"b":"\\"}"}]}', b"[1,[2,{}]]"],
)
def test_value_end_skips_braces_in_strings(text: bytes) -> None:
    assert store_module.value_end(text + b',"rest"', 0) == len(text)
