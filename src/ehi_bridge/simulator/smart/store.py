"""The documents the SMART sandbox serves, built once from the Synthea patients. Pure.

Most documents are the Synthea lines of :mod:`ehi_bridge.simulator.datasets`, byte for byte.
So that clients meet what real EHRs send, a deterministic share of them (chosen by a hash of
the resource id, the same on every run) is derived at load time, by byte edits of the line:

* **DocumentReference → Binary** (half of them): the first attachment's inline ``data`` is
  replaced by ``"url":"{fhir base}/Binary/{id}"``; a ``Binary`` (``contentType`` + the same
  base64 ``data``) with a UUIDv5 id is served beside it. The base is the profile's FHIR base,
  put in when served (:meth:`Doc.render`).
* **MedicationRequest → Medication** (a third each): ``medicationCodeableConcept`` becomes
  either a ``contained`` Medication referenced as ``#med``, or a reference to a standalone
  ``Medication/{id}`` (UUIDv5 of the code's bytes, shared by every request with that code).
* **urn:uuid: references** (a quarter of the resources that point at an Encounter):
  ``"reference":"Encounter/{uuid}"`` becomes ``"reference":"urn:uuid:{uuid}"`` (the Encounter
  with that id is in the same patient's records).

Everything else is untouched. A patient's records (:meth:`Store.patient_docs`) are their
export lines as the Fasten simulator serves them (Patient, own resources, the Practitioner,
PractitionerRole, Organization and Location resources they reference) plus the derived
Binary and Medication resources: exactly what a complete sync stores. Contained resources
live inside their parent and are not listed on their own.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from ehi_bridge.simulator import datasets

BASE_PLACEHOLDER = b"__SMART_FHIR_BASE__"
SHARED_TYPES = frozenset(
    {"Organization", "Location", "Practitioner", "PractitionerRole", "Medication", "Binary"}
)
_NAMESPACE = uuid.UUID("0c0b3c3e-6f57-4f0e-9b1c-5d7d8f0a2b61")
_TYPE_ID_RE = re.compile(rb'^\{"resourceType":"([A-Za-z]+)","id":"([^"]+)"')
_ATTACHMENT_RE = re.compile(rb'"contentType":"([^"\\]*)","data":"([A-Za-z0-9+/=]*)"')
_MED_CC = b'"medicationCodeableConcept":'
_ENCOUNTER_REF = b'"reference":"Encounter/'


@dataclass(frozen=True, slots=True)
class Facets:
    """What searches filter on, read once at load time."""

    category: frozenset[str] = frozenset()  # "code" and "system|code"
    intent: str | None = None
    status: str | None = None
    identifiers: frozenset[str] = frozenset()  # "value" and "system|value"


@dataclass(frozen=True, slots=True)
class Doc:
    """One served resource."""

    rtype: str
    id: str
    raw: bytes  # as served, except BASE_PLACEHOLDER when ``templated``
    templated: bool = False
    derived: str | None = None  # None: the Synthea line, untouched
    facets: Facets = field(default_factory=Facets)

    @property
    def key(self) -> tuple[str, str]:
        return (self.rtype, self.id)

    def render(self, fhir_base: str) -> bytes:
        if self.templated:
            return self.raw.replace(BASE_PLACEHOLDER, fhir_base.encode())
        return self.raw


@dataclass(frozen=True, slots=True)
class PatientRecords:
    info: datasets.PatientInfo
    docs: tuple[Doc, ...]  # the Patient first
    by_type: dict[str, tuple[Doc, ...]]

    @property
    def keys(self) -> frozenset[tuple[str, str]]:
        return frozenset(doc.key for doc in self.docs)


def bucket(kind: str, resource_id: str, n: int) -> int:
    """A stable choice in ``range(n)`` for a resource (the same on every run)."""
    return hashlib.sha256(f"{kind}:{resource_id}".encode()).digest()[0] % n


def derived_id(kind: str, value: str | bytes) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{text}"))


def value_end(buf: bytes, start: int) -> int:
    """The index just past the JSON object or array that starts at ``buf[start]``."""
    depth = 0
    in_string = False
    i = start
    while i < len(buf):
        c = buf[i]
        if in_string:
            if c == 0x5C:  # backslash: skip the escaped character
                i += 1
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x7B, 0x5B):
            depth += 1
        elif c in (0x7D, 0x5D):
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unterminated JSON value")


def _codes(value: Any) -> set[str]:
    out: set[str] = set()
    items = value if isinstance(value, list) else [value]
    for concept in items:
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                out.add(str(coding["code"]))
                if coding.get("system"):
                    out.add(f"{coding['system']}|{coding['code']}")
    return out


def facets_of(resource: dict[str, Any]) -> Facets:
    identifiers = {str(resource.get("id", ""))}
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            identifiers.add(str(ident["value"]))
            if ident.get("system"):
                identifiers.add(f"{ident['system']}|{ident['value']}")
    intent = resource.get("intent")
    status = resource.get("status")
    return Facets(
        category=frozenset(_codes(resource.get("category"))),
        intent=intent if isinstance(intent, str) else None,
        status=status if isinstance(status, str) else None,
        identifiers=frozenset(identifiers),
    )


def _doc(raw: bytes, *, templated: bool = False, derived: str | None = None) -> Doc:
    match = _TYPE_ID_RE.match(raw)
    if match is None:
        raise ValueError("a served line must start with resourceType and id")
    resource = orjson.loads(raw.replace(BASE_PLACEHOLDER, b"http://sandbox.invalid"))
    return Doc(
        rtype=match.group(1).decode(),
        id=match.group(2).decode(),
        raw=raw,
        templated=templated,
        derived=derived,
        facets=facets_of(resource),
    )


def derive(line: bytes) -> tuple[bytes, list[bytes], list[str]]:
    """One Synthea line → (the line as served, extra documents it needs, what was done)."""
    match = _TYPE_ID_RE.match(line)
    if match is None:
        return line, [], []
    rtype, rid = match.group(1), match.group(2).decode()
    extra: list[bytes] = []
    done: list[str] = []
    if rtype == b"DocumentReference" and bucket("binary", rid, 2) == 0:
        att = _ATTACHMENT_RE.search(line)
        if att is not None:
            binary_id = derived_id("binary", rid).encode()
            content_type, data = att.group(1), att.group(2)
            line = b"".join(
                [
                    line[: att.start()],
                    b'"contentType":"',
                    content_type,
                    b'","url":"',
                    BASE_PLACEHOLDER,
                    b"/Binary/",
                    binary_id,
                    b'"',
                    line[att.end() :],
                ]
            )
            extra.append(
                b'{"resourceType":"Binary","id":"%s","contentType":"%s","data":"%s"}'
                % (binary_id, content_type, data)
            )
            done.append("binary")
    if rtype == b"MedicationRequest" and _MED_CC in line:
        choice = bucket("medication", rid, 3)
        at = line.index(_MED_CC)
        start = at + len(_MED_CC)
        end = value_end(line, start)
        concept = line[start:end]
        if choice == 0:
            line = line[:at] + b'"medicationReference":{"reference":"#med"}' + line[end:]
            head = b'"id":"%s",' % rid.encode()
            pos = line.index(head) + len(head)
            contained = b'"contained":[{"resourceType":"Medication","id":"med","code":%s}],'
            line = line[:pos] + contained % concept + line[pos:]
            done.append("contained")
        elif choice == 1:
            med_id = derived_id("medication", hashlib.sha256(concept).hexdigest()).encode()
            ref = b'"medicationReference":{"reference":"Medication/%s"}' % med_id
            line = line[:at] + ref + line[end:]
            extra.append(b'{"resourceType":"Medication","id":"%s","code":%s}' % (med_id, concept))
            done.append("medication")
    if rtype != b"Encounter" and _ENCOUNTER_REF in line and bucket("urn", rid, 4) == 0:
        line = line.replace(_ENCOUNTER_REF, b'"reference":"urn:uuid:')
        done.append("urn_uuid")
    return line, extra, done


@dataclass(frozen=True, slots=True)
class Store:
    patients: tuple[PatientRecords, ...]
    by_patient_id: dict[str, PatientRecords]
    docs: dict[tuple[str, str], Doc]
    owners: dict[tuple[str, str], frozenset[str]]  # patient ids whose records hold it

    def patient(self, patient_id: str) -> PatientRecords | None:
        return self.by_patient_id.get(patient_id)

    def get(self, rtype: str, rid: str) -> Doc | None:
        return self.docs.get((rtype, rid))


def _group(docs: Iterable[Doc]) -> dict[str, tuple[Doc, ...]]:
    out: dict[str, list[Doc]] = {}
    for doc in docs:
        out.setdefault(doc.rtype, []).append(doc)
    return {k: tuple(v) for k, v in out.items()}


def build_store(patient_lines: Sequence[tuple[datasets.PatientInfo, Sequence[bytes]]]) -> Store:
    docs: dict[tuple[str, str], Doc] = {}
    owners: dict[tuple[str, str], set[str]] = {}
    patients: list[PatientRecords] = []
    for info, lines in patient_lines:
        own: dict[tuple[str, str], Doc] = {}
        extras: dict[tuple[str, str], Doc] = {}
        for line in lines:
            served, extra, done = derive(line)
            doc = _doc(served, templated=BASE_PLACEHOLDER in served, derived=",".join(done) or None)
            doc = docs.setdefault(doc.key, doc)
            own.setdefault(doc.key, doc)
            for raw in extra:
                extra_doc = _doc(raw, derived="from " + doc.rtype)
                extra_doc = docs.setdefault(extra_doc.key, extra_doc)
                extras.setdefault(extra_doc.key, extra_doc)
        ordered = (*own.values(), *(d for k, d in extras.items() if k not in own))
        for doc in ordered:
            owners.setdefault(doc.key, set()).add(info.id)
        patients.append(PatientRecords(info=info, docs=ordered, by_type=_group(ordered)))
    return Store(
        patients=tuple(patients),
        by_patient_id={p.info.id: p for p in patients},
        docs=docs,
        owners={k: frozenset(v) for k, v in owners.items()},
    )


@cache
def default_store() -> Store:
    """The Synthea patients of :mod:`ehi_bridge.simulator.datasets`, derived as above."""
    return build_store(
        [(info, datasets.patient_lines(info.index)) for info in datasets.list_patients()]
    )
