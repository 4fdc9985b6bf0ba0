"""The entries of one FHIR Bundle file, each ``entry.resource`` as its original bytes.

Pure: the only I/O is reading the binary stream it is given. A streaming walk
(:mod:`ehi_bridge.records.jsonscan`) records the byte span of each ``entry[].resource``
and hands those exact bytes on; nothing is parsed and dumped again, so ``0.00`` stays
``0.00``, ``\\u00e9`` stays escaped, and a pretty-printed resource keeps its own spacing.
Memory: one read chunk plus the largest entry.

The Bundle's own facts (``id``, ``type``, ``timestamp``, ``total``) and each entry's
``fullUrl`` and ``search.mode`` are kept as metadata. Keys may come in any order:
``resourceType`` last is fine. ``line_number`` of an entry is its 1-based position in
``entry``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final

import msgspec
import orjson

from ehi_bridge.records.jsonscan import ScanError, Scanner

BUNDLE_FACTS: Final = ("id", "type", "timestamp", "total")


@dataclass(slots=True)
class BundleEntry:
    """One entry: its position, the exact bytes of its ``resource`` (None if it has none)
    and what the entry says about it."""

    position: int
    raw: bytes | None
    full_url: str | None = None
    search_mode: str | None = None
    is_object: bool = True


@dataclass(slots=True)
class BundleFacts:
    """Bundle-level metadata, complete once the walk is over."""

    facts: dict[str, Any] = field(default_factory=dict)
    resource_type: str | None = None
    error: tuple[int, str] | None = None  # (entry position, reason) if the walk failed


class _Entry(msgspec.Struct):
    """An entry as msgspec decodes it in a run (see :mod:`jsonscan`): ``resource`` is its
    exact bytes (empty if the entry has none); other keys are skipped."""

    resource: msgspec.Raw = msgspec.Raw()
    fullUrl: Any = None  # the FHIR key
    search: Any = None


_ENTRY_RUN: Final = msgspec.json.Decoder(list[_Entry])


def _decoded(entry: _Entry, position: int) -> BundleEntry:
    """What :func:`_entry` gives for the same bytes (a repeated key: its last value)."""
    raw = bytes(entry.resource)
    search = entry.search
    mode = search.get("mode") if isinstance(search, dict) else None
    return BundleEntry(
        position,
        raw or None,
        full_url=entry.fullUrl if isinstance(entry.fullUrl, str) else None,
        search_mode=mode if isinstance(mode, str) else None,
    )


def _small(scanner: Scanner) -> Any:
    try:
        return orjson.loads(scanner.read_value())
    except orjson.JSONDecodeError as exc:
        raise ScanError(scanner.offset, "invalid value") from exc


def _entry(scanner: Scanner, position: int) -> BundleEntry:
    if scanner.peek() != ord("{"):
        scanner.skip_value()
        return BundleEntry(position, None, is_object=False)
    entry = BundleEntry(position, None)
    scanner.expect(b"{")
    if scanner.accept(b"}"):
        return entry
    while True:
        key = scanner.read_key()
        if key == "resource":
            entry.raw = scanner.read_value()
        elif key == "fullUrl":
            value = _small(scanner)
            entry.full_url = value if isinstance(value, str) else None
        elif key == "search":
            value = _small(scanner)
            mode = value.get("mode") if isinstance(value, dict) else None
            entry.search_mode = mode if isinstance(mode, str) else None
        else:
            scanner.skip_value()
        if not scanner.after_member(b"}"):
            return entry


def iter_entries(stream: IO[bytes], facts: BundleFacts) -> Iterator[BundleEntry]:
    """Each entry in order; ``facts`` is filled as the walk goes. A structure error ends
    the walk and is left in ``facts.error``."""
    scanner = Scanner(stream)
    position = 0
    try:
        scanner.skip_bom()
        scanner.expect(b"{")
        if scanner.accept(b"}"):
            return
        while True:
            key = scanner.read_key()
            if key == "entry" and scanner.peek() == ord("["):
                scanner.expect(b"[")
                for run in scanner.elements(_ENTRY_RUN):
                    if run is None:
                        position += 1
                        yield _entry(scanner, position)
                        continue
                    for decoded in run:
                        position += 1
                        yield _decoded(decoded, position)
            elif key == "resourceType":
                value = _small(scanner)
                facts.resource_type = value if isinstance(value, str) else None
            elif key in BUNDLE_FACTS:
                facts.facts[key] = _small(scanner)
            else:
                scanner.skip_value()
            if not scanner.after_member(b"}"):
                return
    except ScanError:
        facts.error = (position + 1, "invalid JSON")
