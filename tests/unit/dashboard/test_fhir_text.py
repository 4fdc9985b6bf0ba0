"""Display text and dates of FHIR resources, and platform brand names."""

from __future__ import annotations

import pytest

from ehi_bridge.dashboard.fhir_text import describe, human_name, platform_name


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            {
                "resourceType": "Observation",
                "code": {"text": "Glucose"},
                "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
                "effectivePeriod": {"start": "2024-01-02"},
            },
            ("Glucose = 5.4 mmol/L", "2024-01-02"),
        ),
        (
            {
                "resourceType": "Observation",
                "code": {"coding": [{"code": "85354-9", "display": "Blood pressure"}]},
                "component": [
                    {"code": {"text": "systolic"}, "valueQuantity": {"value": 120, "unit": "mmHg"}},
                    {"code": {"text": "diastolic"}, "valueQuantity": {"value": 80, "unit": "mmHg"}},
                ],
                "issued": "2024-03-04T05:06:07Z",
            },
            ("Blood pressure = systolic 120 mmHg, diastolic 80 mmHg", "2024-03-04T05:06:07Z"),
        ),
        (
            {
                "resourceType": "Encounter",
                "type": [{"coding": [{"system": "x", "display": "Office visit"}]}],
                "period": {"start": "2024-01-01T09:00", "end": "2024-01-01T09:30"},
            },
            ("Office visit", "2024-01-01T09:00 to 2024-01-01T09:30"),
        ),
        (
            {"resourceType": "Encounter", "class": {"code": "AMB"}, "period": {"start": "2023"}},
            ("AMB", "2023"),
        ),
        (
            {"resourceType": "Condition", "code": {"text": "Asthma"}, "recordedDate": "2020-05"},
            ("Asthma", "2020-05"),
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "medicationCodeableConcept": {"coding": [{"code": "197361"}]},
                "authoredOn": "2022-02-02",
            },
            ("197361", "2022-02-02"),
        ),
        (
            {
                "resourceType": "Patient",
                "name": [
                    {"use": "usual", "given": ["Bo"]},
                    {"use": "official", "given": ["Robert", "J"], "family": "Doe"},
                ],
                "birthDate": "1970-01-01",
            },
            ("Robert J Doe", "1970-01-01"),
        ),
        (
            {"resourceType": "Binary", "meta": {"lastUpdated": "2024-06-01T00:00:00Z"}},
            ("", "2024-06-01T00:00:00Z"),
        ),
        ({"resourceType": "Observation", "code": 5, "valueQuantity": "x"}, ("", "")),
        ([], ("", "")),
    ],
    ids=lambda v: (
        v[0] if isinstance(v, tuple) else (v.get("resourceType") if isinstance(v, dict) else "list")
    ),
)
def test_describe(resource: object, expected: tuple[str, str]) -> None:
    assert describe(resource) == expected


def test_human_name_prefers_text_and_official() -> None:
    assert human_name({"name": [{"text": "Dr. Ann Lee"}]}) == "Dr. Ann Lee"
    assert human_name({"name": "not a list"}) == ""


def test_platform_names_are_brands() -> None:
    assert platform_name("epic") == "Epic"
    assert platform_name("CERNER") == "Oracle Health (Cerner)"
    assert platform_name("somethingnew") == "somethingnew"
    assert platform_name(None) == ""
