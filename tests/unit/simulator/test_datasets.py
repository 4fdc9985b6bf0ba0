"""The export-file builder: per-patient files from the packaged Synthea data."""

from __future__ import annotations

import gzip
import re

import orjson
import pytest

from ehi_bridge.simulator.datasets import (
    DATA_FILE,
    MALFORMED_KINDS,
    build_patient_export,
    export_stats,
    list_patients,
    malformed_line,
    patient_lines,
)


@pytest.fixture(scope="module")
def source_lines() -> list[bytes]:
    with gzip.open(DATA_FILE, "rb") as fh:
        return [line.rstrip(b"\n") for line in fh]


def test_data_file_is_compact_and_complete(source_lines: list[bytes]) -> None:
    assert DATA_FILE.stat().st_size < 3 * 1024 * 1024
    assert len(source_lines) == 7160


def test_patients_are_listed() -> None:
    patients = list_patients()
    assert len(patients) == 13
    assert [p.index for p in patients] == list(range(13))
    assert len({p.id for p in patients}) == 13
    assert all(p.name and p.resource_count > 1 for p in patients)


def test_lines_are_source_bytes_and_patient_first(source_lines: list[bytes]) -> None:
    source = set(source_lines)
    for patient in list_patients():
        lines = list(build_patient_export(patient.index))
        assert all(line.endswith(b"\n") for line in lines)
        assert all(line[:-1] in source for line in lines)
        first = orjson.loads(lines[0])
        assert (first["resourceType"], first["id"]) == ("Patient", patient.id)
        assert len(lines) == patient.resource_count


def test_every_clinical_resource_belongs_to_exactly_one_patient(
    source_lines: list[bytes],
) -> None:
    shared = {b"Organization", b"Location", b"Practitioner", b"PractitionerRole"}
    clinical = [
        line for line in source_lines if orjson.loads(line)["resourceType"].encode() not in shared
    ]
    exported = [
        line
        for p in list_patients()
        for line in patient_lines(p.index)
        if orjson.loads(line)["resourceType"].encode() not in shared
    ]
    assert sorted(exported) == sorted(clinical)
    for patient in list_patients():
        for line in patient_lines(patient.index):
            refs = set(re.findall(rb'"Patient/([0-9a-f-]{36})"', line))
            assert refs <= {patient.id.encode()}


def test_referenced_organizations_locations_practitioners_are_included() -> None:
    for patient in list_patients():
        resources = [orjson.loads(line) for line in patient_lines(patient.index)]
        values: dict[str, set[str]] = {}
        for r in resources:
            if r["resourceType"] in ("Organization", "Location", "Practitioner"):
                idents = {i["value"] for i in r.get("identifier", [])} | {r["id"]}
                values.setdefault(r["resourceType"], set()).update(idents)
        for line in patient_lines(patient.index):
            for rtype, value in re.findall(
                rb'"(Organization|Location|Practitioner)\?identifier=[^|"]*\|([^"]+)"', line
            ):
                assert value.decode() in values.get(rtype.decode(), set()), (rtype, value)
        types = {r["resourceType"] for r in resources}
        assert {"Organization", "Practitioner", "PractitionerRole", "Location"} <= types


def test_stats_count_the_resources_in_the_file() -> None:
    lines = list(build_patient_export(0))
    stats = export_stats(lines)
    assert stats.total_resources == len(lines)
    assert sum(stats.total_by_resource_type.values()) == len(lines)
    assert stats.total_by_resource_type["Patient"] == 1
    assert stats.as_dict()["total_by_resource_type"] == dict(
        sorted(stats.total_by_resource_type.items())
    )


def test_malformed_lines_are_inserted_and_not_counted() -> None:
    clean = list(build_patient_export(1))
    dirty = list(build_patient_export(1, malformed_lines=7, seed=3))
    assert len(dirty) == len(clean) + 7
    assert [line for line in dirty if line in set(clean)] == clean  # order kept
    assert export_stats(dirty) == export_stats(clean)
    assert dirty == list(build_patient_export(1, malformed_lines=7, seed=3))
    assert dirty != list(build_patient_export(1, malformed_lines=7, seed=4))


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_each_malformed_kind(kind: str) -> None:
    template = patient_lines(0)[0]
    line = malformed_line(kind, template)
    if kind == "invalid_json":
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(line)
    else:
        resource = orjson.loads(line)
        missing = "resourceType" if kind == "missing_resource_type" else "id"
        assert missing not in resource
        assert len(resource) == len(orjson.loads(template)) - 1
    assert export_stats([line]).total_resources == 0
    with pytest.raises(ValueError):
        malformed_line("other", template)


def test_scale_multiplies_resources_with_unique_consistent_ids() -> None:
    base = list(patient_lines(2))
    scaled = list(build_patient_export(2, scale=4))
    assert len(scaled) == 4 * len(base)
    assert [line[:-1] for line in scaled[: len(base)]] == base
    resources = [orjson.loads(line) for line in scaled]
    keys = [(r["resourceType"], r["id"]) for r in resources]
    assert len(set(keys)) == len(keys)
    patient_ids = {r["id"] for r in resources if r["resourceType"] == "Patient"}
    assert len(patient_ids) == 4
    # Each copy's references point at that copy's patient.
    for copy in range(4):
        chunk = scaled[copy * len(base) : (copy + 1) * len(base)]
        pid = orjson.loads(chunk[0])["id"]
        for line in chunk[1:]:
            for ref in re.findall(rb'"Patient/([0-9a-f-]{36})"', line):
                assert ref.decode() == pid
    assert export_stats(scaled).total_resources == len(scaled)
    with pytest.raises(ValueError):
        list(build_patient_export(2, scale=0))
