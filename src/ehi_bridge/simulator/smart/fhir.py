"""FHIR search, paging and bundles over the :mod:`store`, and each profile's quirks. Pure.

Bundles are assembled around each resource's stored bytes; no resource is re-serialized.
Paging is by offset into a deterministic result list; the next link carries the offset in an
opaque ``_page_token`` bound to the search (a token from another search is refused).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

import orjson

from ehi_bridge.simulator.smart.config import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from ehi_bridge.simulator.smart.store import SHARED_TYPES, Doc, PatientRecords

FHIR_JSON = "application/fhir+json"
PAGE_PARAM = "_page_token"
# Epic answers 400 to any other search parameter.
SUPPORTED_PARAMS = frozenset(
    {"patient", "subject", "_count", "_id", "identifier", "category", "intent", "status"}
    | {PAGE_PARAM}
)
_TOKEN_FILTERS = ("category", "intent", "status")
_BUNDLE_NAMESPACE = uuid.UUID("a3c2f4de-61d4-4f51-8c36-6f3f3f7a9a10")


class FhirError(Exception):
    """An answer with an OperationOutcome."""

    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics

    def body(self) -> bytes:
        return operation_outcome(self.code, self.diagnostics)


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> bytes:
    return orjson.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
        }
    )


# --- quirks ---------------------------------------------------------------------------------


def is_reference_lookup(rtype: str, params: Mapping[str, str]) -> bool:
    """A search that resolves a reference (``Patient?_id=``, ``Practitioner?identifier=``)."""
    keys = set(params) - {"_count", PAGE_PARAM}
    if not keys or not keys <= {"_id", "identifier"}:
        return False
    return rtype == "Patient" or rtype in SHARED_TYPES


def search_quirk(profile: str, rtype: str, params: Mapping[str, str]) -> str | None:
    """Why the profile refuses this search (an HTTP 400), or None."""
    if profile == "epic":
        unknown = sorted(set(params) - SUPPORTED_PARAMS)
        if unknown:
            return f"unsupported search parameter: {', '.join(unknown)}"
        if rtype == "Observation" and not params.get("category"):
            return "Observation searches require a category"
    elif profile == "cerner":
        has_patient = bool(params.get("patient") or params.get("subject"))
        if not has_patient and not is_reference_lookup(rtype, params):
            return "searches require the patient parameter"
    elif profile == "athena" and rtype == "MedicationRequest" and not params.get("intent"):
        return "MedicationRequest searches require intent"
    return None


def everything_supported(profile: str) -> bool:
    return profile == "generic"


# --- search ---------------------------------------------------------------------------------


def patient_param(params: Mapping[str, str]) -> str | None:
    value = params.get("patient") or params.get("subject")
    if not value:
        return None
    return value.removeprefix("Patient/")


def _values(raw: str) -> list[str]:
    return [v for v in raw.split(",") if v]


def _matches(doc: Doc, params: Mapping[str, str]) -> bool:
    if "_id" in params and doc.id not in _values(params["_id"]):
        return False
    if "identifier" in params and not doc.facets.identifiers.intersection(
        _values(params["identifier"])
    ):
        return False
    for name in _TOKEN_FILTERS:
        if name not in params:
            continue
        wanted = _values(params[name])
        if name == "category":
            if not doc.facets.category.intersection(wanted):
                return False
        else:
            value = doc.facets.intent if name == "intent" else doc.facets.status
            if value not in {w.rpartition("|")[2] for w in wanted}:
                return False
    return True


def search(records: PatientRecords, rtype: str, params: Mapping[str, str]) -> list[Doc]:
    """The patient's resources of ``rtype`` that match, in a stable order.

    Shared types (Practitioner, Organization, Location, PractitionerRole, Medication, Binary)
    answer the ones the patient's records reference.
    """
    return [doc for doc in records.by_type.get(rtype, ()) if _matches(doc, params)]


def page_size(params: Mapping[str, str], default: int = DEFAULT_PAGE_SIZE) -> int:
    raw = params.get("_count")
    if raw is None:
        return default
    try:
        count = int(raw)
    except ValueError as exc:
        raise FhirError(400, "invalid", "_count must be an integer") from exc
    return max(1, min(count, MAX_PAGE_SIZE))


def search_key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def encode_page_token(offset: int, key: str) -> str:
    return base64.urlsafe_b64encode(f"{offset}.{key}".encode()).rstrip(b"=").decode()


def decode_page_token(token: str, key: str) -> int:
    """The offset in ``token``; :class:`FhirError` 400 when it is not one of this search's."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        offset_text, _, token_key = text.partition(".")
        offset = int(offset_text)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise FhirError(400, "invalid", "unknown page token") from exc
    if token_key != key or offset < 0:
        raise FhirError(400, "invalid", "the page token belongs to another search")
    return offset


@dataclass(frozen=True, slots=True)
class Page:
    docs: Sequence[Doc]
    total: int
    next_offset: int | None


def paginate(docs: Sequence[Doc], offset: int, count: int) -> Page:
    chunk = docs[offset : offset + count]
    following = offset + count
    return Page(
        docs=chunk, total=len(docs), next_offset=following if following < len(docs) else None
    )


def page_url(url: str, query: Sequence[tuple[str, str]], token: str | None) -> str:
    items = [(k, v) for k, v in query if k != PAGE_PARAM]
    if token is not None:
        items.append((PAGE_PARAM, token))
    return f"{url}?{urlencode(items)}" if items else url


def searchset(
    fhir_base: str,
    entries: Sequence[tuple[Doc, str]],
    *,
    total: int,
    self_url: str,
    next_url: str | None,
) -> bytes:
    """A searchset Bundle; ``entries`` are (doc, search mode). Each resource is its bytes."""
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    head = orjson.dumps(
        {
            "resourceType": "Bundle",
            "id": str(uuid.uuid5(_BUNDLE_NAMESPACE, self_url)),
            "type": "searchset",
            "total": total,
            "link": links,
        }
    )
    parts = [head[:-1], b',"entry":[']
    for i, (doc, mode) in enumerate(entries):
        if i:
            parts.append(b",")
        parts.append(b'{"fullUrl":')
        parts.append(orjson.dumps(f"{fhir_base}/{doc.rtype}/{doc.id}"))
        parts.append(b',"resource":')
        parts.append(doc.render(fhir_base))
        parts.append(b',"search":{"mode":"%s"}}' % mode.encode())
    parts.append(b"]}")
    return b"".join(parts)


def everything_docs(records: PatientRecords) -> list[tuple[Doc, str]]:
    """``Patient/{id}/$everything``: the patient's resources ("match") and the resources they
    reference ("include"): all of :attr:`PatientRecords.docs`."""
    return [(doc, "include" if doc.rtype in SHARED_TYPES else "match") for doc in records.docs]


# --- discovery ------------------------------------------------------------------------------


def smart_configuration(profile: str, origin: str, auth_methods: Sequence[str]) -> bytes:
    return orjson.dumps(
        {
            "issuer": f"{origin}/{profile}/fhir",
            "authorization_endpoint": f"{origin}/{profile}/oauth/authorize",
            "token_endpoint": f"{origin}/{profile}/oauth/token",
            "token_endpoint_auth_methods_supported": list(auth_methods),
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": [
                "openid",
                "fhirUser",
                "launch/patient",
                "offline_access",
                "patient/*.read",
                "patient/*.rs",
            ],
            "capabilities": [
                "launch-standalone",
                "client-public",
                "client-confidential-symmetric",
                "client-confidential-asymmetric",
                "context-standalone-patient",
                "permission-offline",
                "permission-patient",
                "permission-v1",
                "permission-v2",
            ],
        }
    )


def capability_statement(profile: str, origin: str, types: Sequence[str]) -> bytes:
    security = {
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ]
            }
        ],
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "authorize", "valueUri": f"{origin}/{profile}/oauth/authorize"},
                    {"url": "token", "valueUri": f"{origin}/{profile}/oauth/token"},
                ],
            }
        ],
    }
    resources = []
    for rtype in types:
        entry: dict[str, object] = {
            "type": rtype,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
        }
        if rtype == "Patient" and everything_supported(profile):
            entry["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                }
            ]
        resources.append(entry)
    return orjson.dumps(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-01",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "implementation": {
                "description": f"ehi-bridge SMART sandbox ({profile})",
                "url": f"{origin}/{profile}/fhir",
            },
            "rest": [{"mode": "server", "security": security, "resource": resources}],
        }
    )
