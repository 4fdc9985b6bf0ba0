from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson

from ehi_bridge.records.bundle import BundleFacts, iter_entries
from ehi_bridge.sources.sync import Spool, as_binary, next_link, reference_key, references

BASE = "https://ehr.example/fhir"


def test_reference_keys() -> None:
    assert reference_key("Practitioner/abc", BASE) == ("Practitioner", "abc")
    assert reference_key(f"{BASE}/Binary/x-1", BASE) == ("Binary", "x-1")
    assert reference_key("Encounter/e1/_history/2", BASE) == ("Encounter", "e1")
    for other in ("#med", "urn:uuid:123", "https://other.example/fhir/Patient/1", "junk"):
        assert reference_key(other, BASE) is None


def test_references_attachments_and_conditional_references() -> None:
    resource = {
        "resourceType": "DocumentReference",
        "contained": [{"resourceType": "Medication", "id": "med"}],
        "subject": {"reference": "Patient/p"},
        "author": [{"reference": "Practitioner?identifier=http://npi|123"}],
        "context": {"encounter": [{"reference": "urn:uuid:e"}]},
        "content": [
            {"attachment": {"contentType": "text/plain", "url": f"{BASE}/Binary/b1"}},
            {"attachment": {"contentType": "text/plain", "url": "https://ehr.example/files/9"}},
            {"attachment": {"contentType": "text/plain", "data": "aGk="}},
        ],
        "medication": {"reference": "#med"},
    }
    keys, urls, lookups = references(resource, BASE)
    assert keys == {("Patient", "p"), ("Binary", "b1")}
    assert urls == {"https://ehr.example/files/9"}
    assert lookups == {("Practitioner", "identifier=http://npi|123")}


def test_next_link_and_binary_wrapping() -> None:
    assert (
        next_link({"link": [{"relation": "self", "url": "a"}, {"relation": "next", "url": "b"}]})
        == "b"
    )
    assert next_link({"link": []}) is None
    wrapped = orjson.loads(as_binary("b1", "application/pdf", b"%PDF"))
    assert wrapped["resourceType"] == "Binary" and wrapped["contentType"] == "application/pdf"
    assert base64.b64decode(wrapped["data"]) == b"%PDF"


def test_the_bundle_spool_keeps_every_byte_and_each_key_once(tmp_path: Path) -> None:
    pretty = (
        b'{\n  "resourceType": "Observation",\n  "id": "o1",\n  "valueQuantity": {"value": 0.10}\n}'
    )
    compact = b'{"resourceType":"Patient","id":"p","name":[{"text":"\\u00e9"}]}'
    with Spool(tmp_path / "s.json") as spool:
        assert spool.add(("Observation", "o1"), pretty)
        assert spool.add(("Patient", "p"), compact)
        assert not spool.add(("Patient", "p"), compact)
    with (tmp_path / "s.json").open("rb") as stream:
        raws = [e.raw for e in iter_entries(stream, BundleFacts())]
    assert raws == [pretty, compact]
    with Spool(tmp_path / "s.ndjson", "ndjson") as spool:
        spool.add(("Patient", "p"), compact)
        spool.add(("Observation", "o1"), pretty)
    lines = (tmp_path / "s.ndjson").read_bytes().splitlines()
    assert lines[0] == compact and json.loads(lines[1])["valueQuantity"]["value"] == 0.1
