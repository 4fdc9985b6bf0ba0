"""Pull one patient's records from a FHIR server into a spool file, byte for byte.

Strategies (per platform definition): ``Patient/{id}/$everything`` with paging, or one
search per resource type (``patient``, ``_count``, the platform's required parameters) with
``link[next]`` paging and a loop guard; then references to resources not yet fetched are
followed in at most ``reference_rounds`` rounds, attachments on the FHIR server included.
Each searchset entry's ``resource`` is sliced out of the page as its own bytes
(:mod:`ehi_bridge.records.bundle`); contained resources stay inside their parent's bytes;
a non-JSON answer (a Binary's raw content) is kept as a ``Binary`` with base64 ``data``.

The spool is a FHIR Bundle (``collection``) whose entries are those exact bytes, or NDJSON
for the CLI's one-off pulls; memory holds one page per search in flight plus the keys seen.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import orjson

from ehi_bridge.records.bundle import BundleFacts, iter_entries
from ehi_bridge.sources.definitions import Platform
from ehi_bridge.sources.fetch import FHIR_JSON, Answer, FailureReason, FhirClient, SyncError

Key = tuple[str, str]
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
REFERENCE_BATCH = 20
JSON_ATTEMPTS = 2  # a broken JSON answer is asked for once more
# Types that are not the patient's own: many servers refuse to search them by patient, which
# is then noted, not a failure (they are also reached by following references).
SHARED_TYPES = frozenset({"Practitioner", "PractitionerRole", "Organization", "Location"})


class Spool:
    """The sync's output file. Each key is written once (the first copy received)."""

    def __init__(self, path: Path, fmt: Literal["bundle", "ndjson"] = "bundle") -> None:
        self.path = Path(path)
        self.fmt = fmt
        self.seen: set[Key] = set()
        self.by_type: dict[str, int] = {}
        self.bytes_written = 0
        self._file: IO[bytes] | None = None
        self._first = True

    def __enter__(self) -> Spool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb")  # a re-run starts the file again
        if self.fmt == "bundle":
            self._write(b'{"resourceType":"Bundle","type":"collection","entry":[\n')
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._file is not None
        try:
            if exc_type is None:
                if self.fmt == "bundle":
                    self._write(b"\n]}\n")
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()

    @property
    def total(self) -> int:
        return len(self.seen)

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self.bytes_written += len(data)

    def add(self, key: Key, raw: bytes) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        self.by_type[key[0]] = self.by_type.get(key[0], 0) + 1
        if self.fmt == "bundle":
            self._write((b"" if self._first else b",\n") + b'{"resource":' + raw + b"}")
        else:
            # NDJSON cannot hold a line break: a pretty-printed resource is compacted here
            # (the durable path uses the Bundle spool, which keeps every byte).
            line = raw if b"\n" not in raw and b"\r" not in raw else orjson.dumps(orjson.loads(raw))
            self._write(line + b"\n")
        self._first = False
        return True


@dataclass(frozen=True)
class SyncPlan:
    platform: Platform
    patient_id: str
    types: tuple[str, ...]
    page_size: int = 50
    max_pages: int = 500
    reference_rounds: int = 10


@dataclass
class SyncResult:
    total: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # search/what → failure reason
    pages: int = 0
    strategy: str = ""
    reference_rounds: int = 0
    unresolved_references: int = 0
    skipped_external: int = 0
    incidents: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    token_refreshes: int = 0
    peak_in_flight: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_type": dict(self.by_type),
            "problems": dict(self.problems),
            "pages": self.pages,
            "strategy": self.strategy,
            "reference_rounds": self.reference_rounds,
            "unresolved_references": self.unresolved_references,
            "skipped_external": self.skipped_external,
            "incidents": dict(self.incidents),
            "requests": self.requests,
            "retries": self.retries,
            "token_refreshes": self.token_refreshes,
            "peak_in_flight": self.peak_in_flight,
        }


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def reference_key(reference: str, base_url: str) -> Key | None:
    """``Type/id`` of a reference to this server (relative, or absolute under the base);
    None for contained (``#``), ``urn:`` and other servers' references. Pure."""
    if not reference or reference.startswith(("#", "urn:")):
        return None
    if reference.startswith(("http://", "https://")):
        prefix = base_url.rstrip("/") + "/"
        if not reference.startswith(prefix):
            return None
        reference = reference[len(prefix) :]
    parts = reference.split("?", 1)[0].split("/")
    if len(parts) < 2 or not _TYPE.match(parts[0]) or not _ID.match(parts[1]):
        return None
    return parts[0], parts[1]


def conditional_reference(reference: str) -> tuple[str, str] | None:
    """``(Type, query)`` of a conditional reference (``Practitioner?identifier=sys|value``),
    resolved by a search. Pure."""
    rtype, sep, query = reference.partition("?")
    if not sep or not query or not _TYPE.match(rtype):
        return None
    return rtype, query


def references(resource: Any, base_url: str) -> tuple[set[Key], set[str], set[tuple[str, str]]]:
    """What this resource refers to on this server: keys to read, attachment URLs that are
    not a ``Type/id`` (to fetch raw), and conditional references (to search). Pure."""
    keys: set[Key] = set()
    urls: set[str] = set()
    lookups: set[tuple[str, str]] = set()
    for node in _walk(resource):
        ref = node.get("reference")
        if isinstance(ref, str):
            key = reference_key(ref, base_url)
            if key is not None:
                keys.add(key)
            else:
                lookup = conditional_reference(ref)
                if lookup is not None:
                    lookups.add(lookup)
        url = node.get("url")
        if isinstance(url, str) and "contentType" in node and "data" not in node:
            key = reference_key(url, base_url)
            if key is not None:
                keys.add(key)
            elif url.startswith(("http://", "https://")):
                urls.add(url)
    return keys, urls, lookups


def as_binary(resource_id: str, content_type: str, body: bytes) -> bytes:
    """A non-JSON answer kept as a FHIR ``Binary``."""
    return orjson.dumps(
        {
            "resourceType": "Binary",
            "id": resource_id,
            "contentType": content_type or "application/octet-stream",
            "data": base64.b64encode(body).decode("ascii"),
        }
    )


def next_link(bundle: Any) -> str | None:
    for link in bundle.get("link", []) if isinstance(bundle, dict) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


class Syncer:
    def __init__(
        self,
        client: FhirClient,
        plan: SyncPlan,
        spool: Spool,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.client = client
        self.plan = plan
        self.spool = spool
        self.progress = progress
        self.result = SyncResult()
        self._wanted: set[Key] = set()
        self._urls: set[str] = set()
        self._failed: set[Key] = set()
        self._lookups: set[tuple[str, str]] = set()

    # --- storing ---------------------------------------------------------------------------

    def _keep(self, raw: bytes, parsed: Any, fallback: Key | None = None) -> None:
        if not isinstance(parsed, dict):
            return
        rtype, rid = parsed.get("resourceType"), parsed.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str):
            if fallback is None:
                self.result.incidents["entry_without_id"] = (
                    self.result.incidents.get("entry_without_id", 0) + 1
                )
                return
            rtype, rid = fallback
        if self.spool.add((rtype, rid), raw):
            keys, urls, lookups = references(parsed, self.client.base_url)
            self._wanted |= keys
            self._urls |= urls
            self._lookups |= lookups
            if self.progress is not None:
                self.progress(self.spool.total)

    def _keep_page(self, answer: Answer, page: dict[str, Any]) -> None:
        entries = page.get("entry")
        parsed_entries = entries if isinstance(entries, list) else []
        for entry in iter_entries(io.BytesIO(answer.body), BundleFacts()):
            if entry.raw is None or entry.search_mode == "outcome":
                continue
            parsed_entry = parsed_entries[entry.position - 1]
            self._keep(entry.raw, parsed_entry.get("resource"))

    # --- requests --------------------------------------------------------------------------

    async def _json(
        self, url: str, params: dict[str, str] | None = None
    ) -> tuple[Answer, dict[str, Any]]:
        for attempt in range(1, JSON_ATTEMPTS + 1):
            answer = await self.client.get(url, params)
            try:
                parsed = orjson.loads(answer.body)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                return answer, parsed
            self.result.incidents["invalid_json"] = self.result.incidents.get("invalid_json", 0) + 1
            if attempt == JSON_ATTEMPTS:
                break
        raise SyncError(FailureReason.INVALID_RESPONSE, "not a JSON object")

    async def _pages(self, path: str, params: dict[str, str]) -> None:
        url: str | None = path
        query: dict[str, str] | None = params
        seen: set[str] = set()
        pages = 0
        while url is not None:
            answer, page = await self._json(url, query)
            if page.get("resourceType") != "Bundle":
                raise SyncError(FailureReason.INVALID_RESPONSE, "search answer is not a Bundle")
            pages += 1
            self.result.pages += 1
            self._keep_page(answer, page)
            following = next_link(page)
            if following is None:
                return
            if following in seen or pages >= self.plan.max_pages:
                raise SyncError(FailureReason.PAGING_LOOP, f"after {pages} pages")
            seen.add(following)
            url, query = following, None

    async def _guarded(self, label: str, work: Any) -> bool:
        """Run one search; a non-fatal failure is recorded under ``label``."""
        try:
            await work
            return True
        except SyncError as exc:
            if exc.fatal:
                raise
            self.result.problems[label] = exc.reason
            return False

    # --- strategies ------------------------------------------------------------------------

    async def _search_type(self, resource_type: str) -> None:
        variants = self.plan.platform.search_params.get(resource_type) or ({},)
        for extra in variants:
            params = {"patient": self.plan.patient_id, "_count": str(self.plan.page_size)}
            params.update(extra)
            label = resource_type + "".join(f"[{k}={v}]" for k, v in sorted(extra.items()))
            try:
                await self._guarded(label, self._pages(resource_type, params))
            finally:
                if resource_type in SHARED_TYPES and label in self.result.problems:
                    reason = self.result.problems.pop(label)
                    note = f"search_refused:{resource_type}:{reason}"
                    self.result.incidents[note] = 1

    async def _everything(self) -> bool:
        try:
            await self._pages(
                f"Patient/{self.plan.patient_id}/$everything", {"_count": str(self.plan.page_size)}
            )
            return True
        except SyncError as exc:
            if exc.fatal:
                raise
            if exc.reason in (FailureReason.BAD_REQUEST, FailureReason.NOT_FOUND):
                self.result.incidents["everything_refused"] = 1
                return False  # not supported after all: search per type
            self.result.problems["$everything"] = exc.reason
            return True

    async def _read(self, key: Key) -> None:
        rtype, rid = key
        try:
            if rtype == "Binary":
                answer = await self.client.get(f"Binary/{rid}", accept=f"{FHIR_JSON}, */*;q=0.1")
                if not answer.is_json:
                    self._keep(as_binary(rid, answer.content_type, answer.body), None, key)
                    return
                try:
                    parsed = orjson.loads(answer.body)
                except orjson.JSONDecodeError:
                    parsed = None
                if not isinstance(parsed, dict):  # broken JSON: ask once more
                    answer, parsed = await self._json(f"{rtype}/{rid}")
            else:
                answer, parsed = await self._json(f"{rtype}/{rid}")
            self._keep(answer.body, parsed, key)
        except SyncError as exc:
            if exc.fatal:
                raise
            self._failed.add(key)

    async def _read_many(self, rtype: str, ids: list[str]) -> None:
        """Several resources of one type in one search (``_id=a,b,…``); those it does not
        return are read one by one."""
        try:
            answer, page = await self._json(rtype, {"_id": ",".join(ids), "_count": str(len(ids))})
            if page.get("resourceType") != "Bundle":
                raise SyncError(FailureReason.INVALID_RESPONSE, "not a Bundle")
            self._keep_page(answer, page)
        except SyncError as exc:
            if exc.fatal:
                raise
        missing = [(rtype, rid) for rid in ids if (rtype, rid) not in self.spool.seen]
        await asyncio.gather(*(self._read(key) for key in missing))

    async def _lookup(self, rtype: str, query: str) -> None:
        try:
            answer, page = await self._json(f"{rtype}?{query}")
            if page.get("resourceType") == "Bundle":
                self._keep_page(answer, page)
                return
        except SyncError as exc:
            if exc.fatal:
                raise
        self.result.unresolved_references += 1

    async def _read_url(self, url: str) -> None:
        if not self.client.on_host(url):
            self.result.skipped_external += 1  # never send the token to another host
            return
        try:
            answer = await self.client.get(url, accept="*/*")
        except SyncError as exc:
            if exc.fatal:
                raise
            self.result.unresolved_references += 1
            return
        digest = hashlib.sha256(url.encode()).hexdigest()[:64]
        if answer.is_json:
            try:
                parsed = orjson.loads(answer.body)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("resourceType"), str):
                self._keep(answer.body, parsed, ("Binary", digest))
                return
        self._keep(as_binary(digest, answer.content_type, answer.body), None, ("Binary", digest))

    async def _follow(self) -> None:
        fetched_urls: set[str] = set()
        looked_up: set[tuple[str, str]] = set()
        for _ in range(self.plan.reference_rounds):
            keys = sorted(self._wanted - self.spool.seen - self._failed)
            urls = sorted(self._urls - fetched_urls)
            lookups = sorted(self._lookups - looked_up)
            if not keys and not urls and not lookups:
                break
            self.result.reference_rounds += 1
            fetched_urls |= set(urls)
            looked_up |= set(lookups)
            by_type: dict[str, list[str]] = {}
            for rtype, rid in keys:
                by_type.setdefault(rtype, []).append(rid)
            jobs: list[Any] = [self._read(("Binary", rid)) for rid in by_type.pop("Binary", [])]
            for rtype, ids in by_type.items():
                for start in range(0, len(ids), self.plan.page_size):
                    jobs.append(self._read_many(rtype, ids[start : start + self.plan.page_size]))
            jobs += [self._read_url(u) for u in urls]
            jobs += [self._lookup(t, q) for t, q in lookups]
            for start in range(0, len(jobs), REFERENCE_BATCH):
                await asyncio.gather(*jobs[start : start + REFERENCE_BATCH])
        left = self._wanted - self.spool.seen
        self.result.unresolved_references += len(left)

    async def run(self) -> SyncResult:
        patient_key = ("Patient", self.plan.patient_id)
        answer, parsed = await self._json(f"Patient/{self.plan.patient_id}")
        self._keep(answer.body, parsed, patient_key)
        done = False
        if self.plan.platform.everything:
            self.result.strategy = "everything"
            done = await self._everything()
        if not done:
            self.result.strategy = "search"
            try:
                async with asyncio.TaskGroup() as group:
                    for resource_type in self.plan.types:
                        group.create_task(self._search_type(resource_type))
            except ExceptionGroup as group_error:  # a fatal error cancelled the others
                first = group_error.exceptions[0]
                raise first if isinstance(first, Exception) else group_error from None
        if self.plan.platform.follow_references and self.plan.reference_rounds:
            await self._follow()
        stats = self.client.stats
        self.result.total = self.spool.total
        self.result.by_type = dict(self.spool.by_type)
        self.result.requests = stats.requests
        self.result.retries = stats.retries
        self.result.token_refreshes = stats.token_refreshes
        self.result.peak_in_flight = self.client.limiter.peak.get(self.client.host, 0)
        return self.result
