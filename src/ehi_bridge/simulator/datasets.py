"""Synthetic patients and the export files the simulator serves. Pure: reads the packaged
data file, no network.

Other code (ingest benchmarks, tests) reuses this module::

    from ehi_bridge.simulator.datasets import build_patient_export, export_stats, list_patients

    lines = list(build_patient_export(0, scale=10, malformed_lines=3))  # each ends with b"\\n"
    stats = export_stats(lines)  # counts only well-formed resources

Scale 1 yields the source lines byte for byte. Each further copy rewrites every UUID in the
line to a new, deterministic one (ids, references and identifiers stay consistent within a
copy), so ``scale=N`` yields N times the resources with unique ids.
"""

from __future__ import annotations

import gzip
import random
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson

DATA_FILE = Path(__file__).parent / "data" / "synthea-10.ndjson.gz"
MALFORMED_KINDS: tuple[str, ...] = ("invalid_json", "missing_resource_type", "missing_id")
SHARED_TYPES = frozenset({b"Organization", b"Location", b"Practitioner", b"PractitionerRole"})

_TYPE_RE = re.compile(rb'^\{"resourceType":"([A-Za-z]+)","id":"([^"]+)"')
_PATIENT_REF_RE = re.compile(rb'"Patient/([0-9a-f-]{36})"')
_CONDITIONAL_REF_RE = re.compile(
    rb'"(Organization|Location|Practitioner)\?identifier=[^|"]*\|([^"]+)"'
)
_UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SCALE_NAMESPACE = uuid.UUID("5b0f3d8e-2a43-4c36-9a53-6c6f1b0e5e11")


@dataclass(frozen=True, slots=True)
class PatientInfo:
    """One synthetic patient (index = position in :func:`list_patients`)."""

    index: int
    id: str
    name: str
    gender: str
    birth_date: str
    resource_count: int


@dataclass(frozen=True, slots=True)
class ExportStats:
    """What Fasten reports in ``stats`` of ``patient.ehi_export_success``."""

    total_resources: int
    total_by_resource_type: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_resources": self.total_resources,
            "total_by_resource_type": dict(sorted(self.total_by_resource_type.items())),
        }


@dataclass(frozen=True, slots=True)
class _Dataset:
    patients: tuple[PatientInfo, ...]
    lines: tuple[tuple[bytes, ...], ...]  # per patient, without the newline


def _identifier_values(resource: dict[str, Any]) -> list[str]:
    values = [str(resource.get("id", ""))]
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            values.append(str(ident["value"]))
    return values


def _ref_value(resource: dict[str, Any], key: str) -> str | None:
    ref = resource.get(key)
    if isinstance(ref, dict):
        ident = ref.get("identifier")
        if isinstance(ident, dict) and ident.get("value"):
            return str(ident["value"])
    return None


@cache
def _dataset() -> _Dataset:
    with gzip.open(DATA_FILE, "rb") as fh:
        source = [line.rstrip(b"\n") for line in fh if line.strip()]

    patient_lines: dict[str, bytes] = {}
    own: dict[str, list[bytes]] = {}
    shared_by_value: dict[tuple[bytes, str], list[bytes]] = {}
    roles: list[tuple[bytes, dict[str, Any]]] = []
    parsed_shared: dict[bytes, dict[str, Any]] = {}
    for line in source:
        match = _TYPE_RE.match(line)
        if match is None:
            continue
        rtype = match.group(1)
        if rtype == b"Patient":
            pid = match.group(2).decode()
            patient_lines[pid] = line
            own.setdefault(pid, [])
        elif rtype in SHARED_TYPES:
            resource = orjson.loads(line)
            parsed_shared[line] = resource
            if rtype == b"PractitionerRole":
                roles.append((line, resource))
            else:
                for value in _identifier_values(resource):
                    shared_by_value.setdefault((rtype, value), []).append(line)
        else:
            ref = _PATIENT_REF_RE.search(line)
            if ref is not None:
                own.setdefault(ref.group(1).decode(), []).append(line)

    patients: list[PatientInfo] = []
    per_patient: list[tuple[bytes, ...]] = []
    for index, (pid, pline) in enumerate(patient_lines.items()):
        resources = own.get(pid, [])
        included: dict[bytes, None] = {}
        for line in resources:
            for rtype, value in _CONDITIONAL_REF_RE.findall(line):
                for shared in shared_by_value.get((rtype, value.decode()), []):
                    included[shared] = None
        # Locations' managing organizations; roles of included practitioners and their orgs.
        npis: set[str] = set()
        for line in list(included):
            resource = parsed_shared[line]
            if resource.get("resourceType") == "Location":
                org = _ref_value(resource, "managingOrganization")
                for shared in shared_by_value.get((b"Organization", org or ""), []):
                    included[shared] = None
            if resource.get("resourceType") == "Practitioner":
                npis.update(_identifier_values(resource))
        for line, role in roles:
            if _ref_value(role, "practitioner") in npis:
                included[line] = None
                org = _ref_value(role, "organization")
                for shared in shared_by_value.get((b"Organization", org or ""), []):
                    included[shared] = None
        body = [*included, *resources]
        random.Random(index).shuffle(body)
        lines = (pline, *body)
        per_patient.append(lines)
        patient = orjson.loads(pline)
        name = (patient.get("name") or [{}])[0]
        patients.append(
            PatientInfo(
                index=index,
                id=pid,
                name=" ".join([*name.get("given", []), name.get("family", "")]).strip(),
                gender=str(patient.get("gender", "")),
                birth_date=str(patient.get("birthDate", "")),
                resource_count=len(lines),
            )
        )
    return _Dataset(patients=tuple(patients), lines=tuple(per_patient))


def list_patients() -> list[PatientInfo]:
    """The synthetic patients available to every simulated health system."""
    return list(_dataset().patients)


def patient_count() -> int:
    return len(_dataset().patients)


def patient_lines(patient_index: int) -> Sequence[bytes]:
    """The patient's export lines at scale 1 (no newline), bytes exactly as in the source."""
    data = _dataset()
    return data.lines[patient_index % len(data.lines)]


@cache
def _templates(patient_index: int) -> tuple[tuple[tuple[bytes, ...], tuple[bytes, ...]], ...]:
    """Each line split at its UUIDs: (literal pieces, UUIDs), so copies are cheap joins."""
    out = []
    for line in patient_lines(patient_index):
        pieces = _UUID_RE.split(line)
        out.append((tuple(pieces), tuple(_UUID_RE.findall(line))))
    return tuple(out)


def _copy_uuid(copy: int, old: bytes) -> bytes:
    return str(uuid.uuid5(_SCALE_NAMESPACE, f"{copy}:{old.decode()}")).encode()


def _rewrite(
    pieces: tuple[bytes, ...], uuids: tuple[bytes, ...], copy: int, memo: dict[bytes, bytes]
) -> bytes:
    out = [pieces[0]]
    for old, piece in zip(uuids, pieces[1:], strict=True):
        new = memo.get(old)
        if new is None:
            new = memo[old] = _copy_uuid(copy, old)
        out.append(new)
        out.append(piece)
    return b"".join(out)


def malformed_line(kind: str, template: bytes) -> bytes:
    """One malformed export line (no newline) derived from a real resource line."""
    if kind == "invalid_json":
        return template[: max(1, len(template) // 2)]
    resource = orjson.loads(template)
    if kind == "missing_resource_type":
        resource.pop("resourceType", None)
    elif kind == "missing_id":
        resource.pop("id", None)
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return orjson.dumps(resource)


def build_patient_export(
    patient_index: int,
    *,
    scale: int = 1,
    malformed_lines: int = 0,
    malformed_kinds: Sequence[str] = MALFORMED_KINDS,
    seed: int = 0,
) -> Iterator[bytes]:
    """Yield the JSONL export of one patient, one line (ending in ``b"\\n"``) at a time.

    ``malformed_lines`` extra lines are inserted at positions chosen by ``seed``, cycling
    through ``malformed_kinds`` (see :data:`MALFORMED_KINDS`). Deterministic for equal
    arguments, so a server can regenerate the same bytes for a ``Range`` request.
    """
    if scale < 1:
        raise ValueError("scale must be at least 1")
    base = patient_lines(patient_index)
    total = len(base) * scale
    rng = random.Random(f"{patient_index}:{seed}")
    bad_at: dict[int, list[str]] = {}
    for i in range(malformed_lines):
        bad_at.setdefault(rng.randrange(total + 1), []).append(
            malformed_kinds[i % len(malformed_kinds)]
        )
    templates = _templates(patient_index % patient_count()) if scale > 1 else ()
    position = 0
    for copy in range(scale):
        memo: dict[bytes, bytes] = {}
        for i, line in enumerate(base):
            for kind in bad_at.get(position, ()):
                yield malformed_line(kind, line) + b"\n"
            if copy:
                pieces, uuids = templates[i]
                line = _rewrite(pieces, uuids, copy, memo)
            yield line + b"\n"
            position += 1
    for kind in bad_at.get(position, ()):
        yield malformed_line(kind, base[-1]) + b"\n"


def export_stats(lines: Iterable[bytes]) -> ExportStats:
    """Count the well-formed resources (JSON object with ``resourceType`` and ``id``)."""
    by_type: dict[str, int] = {}
    total = 0
    for line in lines:
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(resource, dict):
            continue
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not resource.get("id"):
            continue
        by_type[rtype] = by_type.get(rtype, 0) + 1
        total += 1
    return ExportStats(total_resources=total, total_by_resource_type=by_type)
