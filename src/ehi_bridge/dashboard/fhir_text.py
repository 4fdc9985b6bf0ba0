"""What a person reads first about a FHIR resource: a short display text and its date.

Pure functions over the parsed JSON (no I/O). Used by the dashboard's records view and the
connection page's patient facts, both of which are audited reads. Unknown shapes fall back
to nothing rather than failing: stored resources are kept exactly as received.
"""

from __future__ import annotations

from typing import Any

PLATFORM_NAMES = {
    "epic": "Epic",
    "cerner": "Oracle Health (Cerner)",
    "athena": "athenahealth",
    "athenahealth": "athenahealth",
    "nextgen": "NextGen",
    "cms": "Medicare (CMS Blue Button)",
    "allscripts": "Veradigm (Allscripts)",
    "eclinicalworks": "eClinicalWorks",
    "meditech": "MEDITECH",
    "manual": "uploaded file",
}


def platform_name(platform_type: str | None) -> str:
    """The brand a person knows for Fasten's ``platform_type`` (``epic`` → Epic)."""
    if not platform_type:
        return ""
    return PLATFORM_NAMES.get(platform_type.lower(), platform_type)


def _concept(value: Any) -> str:
    """A CodeableConcept (or Coding) as text: its text, else the first coding's display,
    else that coding's code."""
    if isinstance(value, list):
        return next((t for t in (_concept(v) for v in value) if t), "")
    if not isinstance(value, dict):
        return ""
    if isinstance(value.get("text"), str) and value["text"]:
        return str(value["text"])
    if isinstance(value.get("display"), str) and value["display"]:
        return str(value["display"])
    codings = value.get("coding")
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict):
                text = coding.get("display") or coding.get("code")
                if isinstance(text, str) and text:
                    return text
    code = value.get("code")
    return code if isinstance(code, str) else ""


def _quantity(value: Any) -> str:
    if not isinstance(value, dict) or value.get("value") is None:
        return ""
    unit = value.get("unit") or value.get("code") or ""
    return f"{value['value']} {unit}".strip()


def _value(resource: dict[str, Any]) -> str:
    if "valueQuantity" in resource:
        return _quantity(resource["valueQuantity"])
    if "valueCodeableConcept" in resource:
        return _concept(resource["valueCodeableConcept"])
    for key in ("valueString", "valueBoolean", "valueInteger", "valueDateTime"):
        if key in resource:
            return str(resource[key])
    components = resource.get("component")
    if isinstance(components, list):
        parts = [
            f"{_concept(c.get('code'))} {_value(c)}".strip()
            for c in components
            if isinstance(c, dict)
        ]
        return ", ".join(p for p in parts if p)
    return ""


def _first_date(resource: dict[str, Any], *keys: str) -> str:
    for key in keys:
        value = resource.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):  # a Period
            start, end = value.get("start"), value.get("end")
            if isinstance(start, str) and start:
                return f"{start} to {end}" if isinstance(end, str) and end else start
    return ""


def human_name(resource: dict[str, Any]) -> str:
    names = resource.get("name")
    if not isinstance(names, list) or not names:
        return ""
    official = [n for n in names if isinstance(n, dict) and n.get("use") == "official"]
    name = (official or [n for n in names if isinstance(n, dict)] or [{}])[0]
    if isinstance(name.get("text"), str) and name["text"]:
        return str(name["text"])
    given = name.get("given")
    parts = [g for g in given if isinstance(g, str)] if isinstance(given, list) else []
    if isinstance(name.get("family"), str):
        parts.append(name["family"])
    return " ".join(parts)


def describe(resource: Any) -> tuple[str, str]:
    """(display text, date) of a resource; empty strings when there is nothing to show."""
    if not isinstance(resource, dict):
        return "", ""
    kind = resource.get("resourceType")
    if kind == "Observation":
        text = " = ".join(p for p in (_concept(resource.get("code")), _value(resource)) if p)
        return text, _first_date(resource, "effectiveDateTime", "effectivePeriod", "issued")
    if kind == "Encounter":
        what = _concept(resource.get("type")) or _concept(resource.get("class"))
        return what, _first_date(resource, "period")
    if kind == "Condition":
        return _concept(resource.get("code")), _first_date(
            resource, "onsetDateTime", "onsetPeriod", "recordedDate"
        )
    if kind in ("MedicationRequest", "MedicationStatement"):
        what = _concept(resource.get("medicationCodeableConcept"))
        if not what and isinstance(resource.get("medicationReference"), dict):
            what = str(resource["medicationReference"].get("display") or "")
        return what, _first_date(resource, "authoredOn", "effectiveDateTime", "effectivePeriod")
    if kind == "Procedure":
        return _concept(resource.get("code")), _first_date(
            resource, "performedDateTime", "performedPeriod"
        )
    if kind == "Immunization":
        return _concept(resource.get("vaccineCode")), _first_date(resource, "occurrenceDateTime")
    if kind == "AllergyIntolerance":
        return _concept(resource.get("code")), _first_date(
            resource, "onsetDateTime", "recordedDate"
        )
    if kind == "DiagnosticReport":
        return _concept(resource.get("code")), _first_date(
            resource, "effectiveDateTime", "effectivePeriod", "issued"
        )
    if kind == "Patient":
        return human_name(resource), _first_date(resource, "birthDate")
    text = _concept(resource.get("code")) or _concept(resource.get("type"))
    meta = resource.get("meta")
    updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return text, updated if isinstance(updated, str) else ""
