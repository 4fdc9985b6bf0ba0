"""The simulator's state: connections, exports, webhook deliveries, storage requests.

Everything lives in memory behind one lock, so tests may call :class:`Simulator` methods
from any thread while the servers run in theirs. Network I/O is elsewhere (``webhooks.py``
sends, ``storage.py`` and ``api.py`` serve); this module decides *what* happens *when*.
"""

from __future__ import annotations

import random
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from ehi_bridge.config import Mode
from ehi_bridge.simulator import datasets
from ehi_bridge.simulator.clock import SimClock, iso
from ehi_bridge.simulator.config import SimulatorConfig

FAILURE_REASONS: tuple[str, ...] = (
    "token_refresh_failure",
    "scope_patient_missing",
    "resource_patient_failure",
    "resource_invalid_content",
    "suppressed_please_contact",
    "tefca_no_documents_found",
)
EXPORT_FILE_NAME = "export-1.jsonl"
ReleaseOrder = Literal["fifo", "reverse", "shuffle"]


class SimulatorError(Exception):
    """A request the simulator refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class Behaviour:
    """How one connection's exports and webhooks misbehave (all off by default)."""

    export_delay_seconds: float | None = None  # simulated; None: platform default
    slow: bool = False  # use the platform's slow delay (epic: 35 simulated minutes)
    fail_reason: str | None = None  # export fails with this failure_reason
    malformed_lines: int = 0
    stats_mismatch: int = 0  # added to stats.total_resources (and one type's count)
    scale: int = 1
    truncate_after_bytes: int | None = None  # storage closes the connection after N bytes
    truncate_mode: Literal["close", "content_length"] = "close"
    truncate_times: int | None = None  # only the first N transfers break (None: every one)
    throttle_bytes_per_second: int | None = None
    legacy_download_link: bool = False  # single ``download_link`` instead of the list
    duplicate_webhooks: int = 1  # deliver each event this many times
    webhook_delay_seconds: float = 0.0  # simulated delay before the first attempt

    def validate(self) -> None:
        if self.fail_reason is not None and self.fail_reason not in FAILURE_REASONS:
            raise SimulatorError(f"unknown failure_reason {self.fail_reason!r}")
        if self.scale < 1 or self.duplicate_webhooks < 1 or self.malformed_lines < 0:
            raise SimulatorError("scale and duplicate_webhooks must be >= 1, malformed >= 0")
        if self.truncate_mode not in ("close", "content_length"):
            raise SimulatorError("truncate_mode is 'close' or 'content_length'")

    def updated(self, changes: dict[str, Any]) -> Behaviour:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise SimulatorError(f"unknown behaviour fields: {sorted(unknown)}")
        try:
            new = _BEHAVIOUR.validate_python({**asdict(self), **changes}, strict=False)
        except ValidationError as exc:
            fields_ = ", ".join(str(e["loc"][0]) for e in exc.errors() if e.get("loc"))
            raise SimulatorError(f"invalid behaviour fields: {fields_}") from exc
        new.validate()
        return new


_BEHAVIOUR: TypeAdapter[Behaviour] = TypeAdapter(Behaviour)


@dataclass(slots=True)
class Brand:
    brand_id: str
    name: str
    platform_type: str
    portal_id: str
    endpoint_id: str
    org_id: str


@dataclass(slots=True)
class Connection:
    org_connection_id: str
    api_mode: Mode
    brand: Brand
    patient_index: int
    external_id: str | None
    external_state: str | None
    request_id: str
    status: str  # authorized | revoked
    scope: str
    created_at: float
    consent_expires_at: float
    behaviour: Behaviour = field(default_factory=Behaviour)
    tefca: bool = False

    def webhook_data(self) -> dict[str, Any]:
        """``data`` of ``patient.connection_success`` (TEFCA mode: no brand/portal/endpoint)."""
        data: dict[str, Any] = {
            "org_connection_id": self.org_connection_id,
            "endpoint_id": self.brand.endpoint_id,
            "brand_id": self.brand.brand_id,
            "portal_id": self.brand.portal_id,
            "connection_status": "rejected" if self.status == "rejected" else "authorized",
            "platform_type": self.brand.platform_type,
            "request_id": self.request_id,
            "external_state": self.external_state or "",
            "scope": self.scope,
            "consent_expires_at": iso(self.consent_expires_at),
        }
        if self.external_id is not None:
            data["external_id"] = self.external_id
        if self.tefca:
            for key in ("endpoint_id", "brand_id", "portal_id"):
                del data[key]
            data["tefca_directory_id"] = f"tefca-{self.brand.org_id}"
        return data

    def api_view(self) -> dict[str, Any]:
        """``GET /bridge/org_connection/{id}``."""
        return {
            "id": self.org_connection_id,
            "org_connection_id": self.org_connection_id,
            "org_id": self.brand.org_id,
            "brand_id": self.brand.brand_id,
            "portal_id": self.brand.portal_id,
            "endpoint_id": self.brand.endpoint_id,
            "platform_type": self.brand.platform_type,
            "api_mode": self.api_mode,
            "status": self.status,
            "scope": self.scope,
            "consent_expires_at": iso(self.consent_expires_at),
            "external_id": self.external_id,
            "created_at": iso(self.created_at),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.api_view(),
            "patient_index": self.patient_index,
            "behaviour": asdict(self.behaviour),
        }


@dataclass(slots=True)
class ExportFile:
    """The bytes of one export, regenerated on demand (``scale`` can make them large)."""

    patient_index: int
    scale: int
    malformed_lines: int
    seed: int
    _size: int | None = None
    _stats: datasets.ExportStats | None = None

    def lines(self) -> Iterator[bytes]:
        return datasets.build_patient_export(
            self.patient_index,
            scale=self.scale,
            malformed_lines=self.malformed_lines,
            seed=self.seed,
        )

    def _measure(self) -> None:
        size = 0

        def count() -> Iterator[bytes]:
            nonlocal size
            for line in self.lines():
                size += len(line)
                yield line

        self._stats = datasets.export_stats(count())
        self._size = size

    @property
    def size(self) -> int:
        if self._size is None:
            self._measure()
        assert self._size is not None
        return self._size

    @property
    def stats(self) -> datasets.ExportStats:
        if self._stats is None:
            self._measure()
        assert self._stats is not None
        return self._stats

    def iter_range(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive, in chunks."""
        position = 0
        for line in self.lines():
            line_end = position + len(line)
            if line_end > start and position <= end:
                yield line[max(0, start - position) : end - position + 1]
            position = line_end
            if position > end:
                return

    def read_all(self) -> bytes:
        return b"".join(self.lines())


@dataclass(slots=True)
class Export:
    task_id: str
    org_connection_id: str
    api_mode: Mode
    status: str  # pending | success | failed
    created_at: float
    ready_at: float
    behaviour: Behaviour
    file: ExportFile
    completed_at: float | None = None
    failure_reason: str | None = None
    truncations: int = 0  # transfers the storage server broke on purpose

    @property
    def file_name(self) -> str:
        return EXPORT_FILE_NAME

    def api_view(self) -> dict[str, Any]:
        view: dict[str, Any] = {
            "task_id": self.task_id,
            "org_connection_id": self.org_connection_id,
            "status": self.status,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.completed_at or self.created_at),
        }
        if self.failure_reason:
            view["failure_reason"] = self.failure_reason
        return view

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.api_view(),
            "api_mode": self.api_mode,
            "ready_at": iso(self.ready_at),
            "file_name": self.file_name,
            "behaviour": asdict(self.behaviour),
        }


@dataclass(slots=True)
class Attempt:
    number: int
    date: str  # ``date`` in the body of this attempt
    timestamp: int  # ``webhook-timestamp`` of this attempt
    status_code: int | None
    error: str | None
    body: bytes
    headers: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "date": self.date,
            "timestamp": self.timestamp,
            "status_code": self.status_code,
            "error": self.error,
        }


@dataclass(slots=True)
class Delivery:
    """One delivery job of one event (duplicates are separate jobs with the same id)."""

    seq: int
    event_id: str
    api_mode: Mode
    type: str
    data: dict[str, Any]
    url: str | None
    next_attempt_at: float
    state: str = "pending"  # pending | held | sending | delivered | failed | no_url
    attempts: list[Attempt] = field(default_factory=list)
    release_group: int | None = None
    release_rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "api_mode": self.api_mode,
            "type": self.type,
            "org_connection_id": self.data.get("org_connection_id"),
            "state": self.state,
            "attempts": [a.to_dict() for a in self.attempts],
        }


@dataclass(slots=True)
class StorageRequest:
    """What the storage server received (never the query string: it holds a signature)."""

    path: str
    method: str
    authorization_present: bool
    range: str | None
    status: int
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "method": self.method,
            "authorization_present": self.authorization_present,
            "range": self.range,
            "status": self.status,
            "at": iso(self.at),
        }


class Simulator:
    """All simulated Fasten state. Thread-safe; the servers and the sender share it."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.clock = SimClock()
        self._lock = threading.RLock()
        self._wakeup: Callable[[], None] = lambda: None
        self.api_base_url = ""  # set by the server once its port is known
        self.storage_base_url = ""
        self.brands = [
            Brand(
                brand_id=f"brand-{slug}",
                name=name,
                platform_type=platform,
                portal_id=f"portal-{slug}",
                endpoint_id=f"endpoint-{slug}",
                org_id=f"org-{slug}",
            )
            for name, platform, slug in config.brands
        ]
        self._reset_state()

    def _reset_state(self) -> None:
        self.connections: dict[str, Connection] = {}
        self.exports: dict[str, Export] = {}
        self.deliveries: list[Delivery] = []
        # The deliveries in state "pending": what ``due_deliveries`` looks through (all of
        # ``deliveries`` grows with every event and was scanned on every wake-up).
        self._pending: list[Delivery] = []
        self.storage_log: list[StorageRequest] = []
        self._holding = False
        self._seq = 0
        self._release_groups = 0
        self.default_behaviour = Behaviour()
        self.disabled_endpoints: set[Mode] = set()
        self._failed_in_a_row: dict[Mode, int] = {}

    def set_wakeup(self, wakeup: Callable[[], None]) -> None:
        """Called by the sender so that new work is noticed before the next tick."""
        self._wakeup = wakeup

    def reset(self) -> None:
        with self._lock:
            self._reset_state()
            self.clock.reset()

    def advance_clock(self, seconds: float) -> float:
        now = self.clock.advance(seconds)
        self._wakeup()
        return now

    # --- look-ups ------------------------------------------------------------------------

    def brand(self, key: str | None) -> Brand:
        if key is None:
            return self.brands[0]
        for brand in self.brands:
            if key in (brand.brand_id, brand.platform_type, brand.name):
                return brand
        raise SimulatorError(f"unknown brand or platform {key!r}", 404)

    def connection(self, org_connection_id: str) -> Connection:
        with self._lock:
            conn = self.connections.get(org_connection_id)
            if conn is None:
                raise SimulatorError("org connection not found", 404)
            return conn

    def export(self, task_id: str) -> Export:
        with self._lock:
            export = self.exports.get(task_id)
            if export is None:
                raise SimulatorError("task not found", 404)
            return export

    def list_connections(self) -> list[Connection]:
        with self._lock:
            return list(self.connections.values())

    def list_exports(self) -> list[Export]:
        with self._lock:
            return list(self.exports.values())

    def list_deliveries(
        self, event_type: str | None = None, org_connection_id: str | None = None
    ) -> list[Delivery]:
        with self._lock:
            return [
                d
                for d in self.deliveries
                if (event_type is None or d.type == event_type)
                and (
                    org_connection_id is None
                    or d.data.get("org_connection_id") == org_connection_id
                )
            ]

    def list_storage_requests(self) -> list[StorageRequest]:
        with self._lock:
            return list(self.storage_log)

    def record_storage_request(self, request: StorageRequest) -> None:
        with self._lock:
            self.storage_log.append(request)

    # --- connections -----------------------------------------------------------------------

    def connect(
        self,
        *,
        mode: Mode = "test",
        external_id: str | None = None,
        external_state: str | None = None,
        brand: str | None = None,
        patient_index: int | None = None,
        behaviour: Behaviour | dict[str, Any] | None = None,
        send_webhook: bool = True,
        reconnect_org_connection_id: str | None = None,
        rejected: bool = False,
        tefca: bool = False,
    ) -> Connection:
        """A patient authorizes a portal: a new connection (and its webhook).

        ``rejected``: the webhook says ``connection_status: rejected`` and exports are
        refused; ``tefca``: the webhook lacks brand/portal/endpoint ids (TEFCA mode).
        """
        if mode not in self.config.modes:
            raise SimulatorError(f"unknown mode {mode!r}")
        chosen = self.brand(brand)
        if isinstance(behaviour, dict):
            behaviour = Behaviour().updated(behaviour)
        elif behaviour is not None:
            behaviour.validate()
        with self._lock:
            now = self.clock.now()
            if patient_index is None:
                patient_index = len(self.connections) % datasets.patient_count()
            if not 0 <= patient_index < datasets.patient_count():
                raise SimulatorError("patient_index out of range")
            existing = (
                self.connections.get(reconnect_org_connection_id)
                if reconnect_org_connection_id
                else None
            )
            if existing is not None:
                existing.status = "rejected" if rejected else "authorized"
                existing.consent_expires_at = now + self.config.consent_lifetime_days * 86400
                if behaviour is not None:
                    existing.behaviour = behaviour
                conn = existing
            else:
                conn = Connection(
                    org_connection_id=str(uuid.uuid4()),
                    api_mode=mode,
                    brand=chosen,
                    patient_index=patient_index,
                    external_id=external_id,
                    external_state=external_state,
                    request_id=str(uuid.uuid4()),
                    status="rejected" if rejected else "authorized",
                    scope="openid fhirUser offline_access patient/*.read",
                    created_at=now,
                    consent_expires_at=now + self.config.consent_lifetime_days * 86400,
                    behaviour=behaviour or replace(self.default_behaviour),
                    tefca=tefca,
                )
                self.connections[conn.org_connection_id] = conn
            if send_webhook:
                self._emit(conn, "patient.connection_success", conn.webhook_data())
            return conn

    def connect_many(self, count: int, **kwargs: Any) -> list[Connection]:
        external_ids: list[str | None] | None = kwargs.pop("external_ids", None)
        out = []
        with self._lock:  # one burst: the sender picks the webhooks up together
            for i in range(count):
                if external_ids is not None:
                    kwargs["external_id"] = external_ids[i] if i < len(external_ids) else None
                out.append(self.connect(**kwargs))
        return out

    def set_default_behaviour(self, **changes: Any) -> Behaviour:
        """Behaviour of connections made from now on without one (e.g. through the widget)."""
        with self._lock:
            self.default_behaviour = self.default_behaviour.updated(changes)
            return self.default_behaviour

    def set_behaviour(self, org_connection_id: str, **changes: Any) -> Behaviour:
        with self._lock:
            conn = self.connection(org_connection_id)
            conn.behaviour = conn.behaviour.updated(changes)
            return conn.behaviour

    def revoke(self, org_connection_ids: list[str]) -> list[Connection]:
        """Revoke connections; one ``patient.authorization_revoked`` each, all at once."""
        with self._lock:
            conns = [self.connection(cid) for cid in org_connection_ids]
            for conn in conns:
                conn.status = "revoked"
                self._emit(
                    conn,
                    "patient.authorization_revoked",
                    {
                        "org_connection_id": conn.org_connection_id,
                        "endpoint_id": conn.brand.endpoint_id,
                        "portal_id": conn.brand.portal_id,
                        "brand_id": conn.brand.brand_id,
                        "platform_type": conn.brand.platform_type,
                        "connection_status": "revoked",
                    },
                )
            return conns

    # --- exports ---------------------------------------------------------------------------

    def export_delay(self, conn: Connection) -> float:
        b = conn.behaviour
        if b.export_delay_seconds is not None:
            return b.export_delay_seconds
        if b.slow:
            slow = self.config.slow_export_delay_seconds
            return slow.get(conn.brand.platform_type, slow.get("", 600.0))
        return self.config.default_export_delay_seconds

    def request_export(self, org_connection_id: str, mode: Mode) -> Export:
        """``POST /bridge/fhir/ehi-export``: the pending task, or a new one."""
        with self._lock:
            conn = self.connections.get(org_connection_id)
            if conn is None or conn.api_mode != mode:
                raise SimulatorError("org connection not found", 404)
            if conn.status != "authorized":
                raise SimulatorError("org connection is not authorized", 400)
            for export in self.exports.values():
                if export.org_connection_id == org_connection_id and export.status == "pending":
                    return export
            now = self.clock.now()
            b = replace(conn.behaviour)
            export = Export(
                task_id=str(uuid.uuid4()),
                org_connection_id=org_connection_id,
                api_mode=mode,
                status="pending",
                created_at=now,
                ready_at=now + self.export_delay(conn),
                behaviour=b,
                file=ExportFile(
                    patient_index=conn.patient_index,
                    scale=b.scale,
                    malformed_lines=b.malformed_lines,
                    seed=random.Random(org_connection_id).randrange(1 << 30),
                ),
            )
            self.exports[export.task_id] = export
        self._wakeup()
        return export

    def take_truncation(self, export: Export) -> bool:
        """Whether this transfer of ``export`` breaks (counts it when it does)."""
        with self._lock:
            b = export.behaviour
            if b.truncate_after_bytes is None:
                return False
            if b.truncate_times is not None and export.truncations >= b.truncate_times:
                return False
            export.truncations += 1
            return True

    def has_due_exports(self) -> bool:
        with self._lock:
            now = self.clock.now()
            return any(e.status == "pending" and e.ready_at <= now for e in self.exports.values())

    def complete_due_exports(self) -> list[Export]:
        """Finish every pending export whose simulated delay has passed (called by ticks)."""
        with self._lock:
            now = self.clock.now()
            due = [e for e in self.exports.values() if e.status == "pending" and e.ready_at <= now]
        done = []
        for export in due:
            if export.behaviour.fail_reason is None:
                export.file.stats  # noqa: B018 - measure outside the lock (can be slow)
            with self._lock:
                current = self.exports.get(export.task_id) is export
                if export.status != "pending" or not current:
                    continue  # finished meanwhile, or forgotten by a reset
                if export.org_connection_id not in self.connections:
                    continue
                self._finish_export(export, now)
                done.append(export)
        return done

    def _finish_export(self, export: Export, now: float) -> None:
        conn = self.connections[export.org_connection_id]
        export.completed_at = now
        base = {
            "org_connection_id": export.org_connection_id,
            "task_id": export.task_id,
            "org_id": conn.brand.org_id,
        }
        if export.behaviour.fail_reason is not None:
            export.status = "failed"
            export.failure_reason = export.behaviour.fail_reason
            self._emit(
                conn,
                "patient.ehi_export_failed",
                {"failure_reason": export.failure_reason, **base},
            )
            return
        export.status = "success"
        url = (
            f"{self.api_base_url}/v1/bridge/fhir/ehi-export/{export.task_id}"
            f"/download/{export.file_name}"
        )
        stats = export.file.stats.as_dict()
        if export.behaviour.stats_mismatch:
            delta = export.behaviour.stats_mismatch
            stats["total_resources"] += delta
            by_type = stats["total_by_resource_type"]
            if by_type:
                first = next(iter(by_type))
                by_type[first] = max(0, by_type[first] + delta)
        data: dict[str, Any] = {}
        if export.behaviour.legacy_download_link:
            data["download_link"] = url
        else:
            data["download_links"] = [
                {"url": url, "export_type": "jsonl", "content_type": "application/fhir+ndjson"}
            ]
        self._emit(conn, "patient.ehi_export_success", {**data, **base, "stats": stats})

    def file_available(self, export: Export) -> bool:
        """The file exists: the export succeeded less than 24 (simulated) hours ago."""
        return (
            export.status == "success"
            and export.completed_at is not None
            and self.clock.now() < export.completed_at + self.config.export_file_lifetime_seconds
        )

    # --- webhooks --------------------------------------------------------------------------

    def _emit(
        self,
        conn: Connection | None,
        event_type: str,
        data: dict[str, Any],
        *,
        mode: Mode | None = None,
    ) -> list[Delivery]:
        mode = conn.api_mode if conn is not None else (mode or "test")
        behaviour = conn.behaviour if conn is not None else Behaviour()
        event_id = str(uuid.uuid4())
        url = self.config.modes[mode].webhook_url
        now = self.clock.now()
        out = []
        for _ in range(behaviour.duplicate_webhooks):
            self._seq += 1
            delivery = Delivery(
                seq=self._seq,
                event_id=event_id,
                api_mode=mode,
                type=event_type,
                data=data,
                url=url,
                next_attempt_at=now + behaviour.webhook_delay_seconds,
                state=(
                    "endpoint_disabled"
                    if mode in self.disabled_endpoints
                    else "held"
                    if self._holding
                    else ("pending" if url else "no_url")
                ),
            )
            self.deliveries.append(delivery)
            if delivery.state == "pending":
                self._pending.append(delivery)
            out.append(delivery)
        self._wakeup()
        return out

    def emit(self, mode: Mode, event_type: str, data: dict[str, Any]) -> list[Delivery]:
        """Send any event (e.g. ``patient.request_support``) to a mode's webhook URL."""
        with self._lock:
            return self._emit(None, event_type, data, mode=mode)

    def send_test_webhook(self, mode: Mode = "test") -> str:
        deliveries = self.emit(
            mode, "webhook.test", {"hello": "world", "random": secrets.token_hex(8)}
        )
        return deliveries[0].event_id

    def hold_webhooks(self) -> None:
        """Hold every new delivery until :meth:`release_webhooks` (to reorder them)."""
        with self._lock:
            self._holding = True

    def release_webhooks(self, order: ReleaseOrder = "reverse", seed: int = 0) -> list[Delivery]:
        """Release the held deliveries one after another in ``order``; stop holding."""
        with self._lock:
            self._holding = False
            held = [d for d in self.deliveries if d.state == "held"]
            if order == "reverse":
                held.reverse()
            elif order == "shuffle":
                random.Random(seed).shuffle(held)
            self._release_groups += 1
            now = self.clock.now()
            for rank, delivery in enumerate(held):
                delivery.state = "pending" if delivery.url else "no_url"
                delivery.release_group = self._release_groups
                delivery.next_attempt_at = now
                delivery.release_rank = rank  # sent one after another in this order
                if delivery.state == "pending":
                    self._pending.append(delivery)
        self._wakeup()
        return held

    def due_deliveries(self) -> list[Delivery]:
        """Mark due deliveries as sending and hand them to the sender (ordered)."""
        with self._lock:
            now = self.clock.now()
            due = []
            waiting = []
            for d in self._pending:
                if d.state != "pending":
                    continue
                if d.next_attempt_at > now:
                    waiting.append(d)
                    continue
                if d.api_mode in self.disabled_endpoints:
                    d.state = "endpoint_disabled"
                    continue
                due.append(d)
            self._pending = waiting
            due.sort(key=lambda d: (d.release_group or 0, d.release_rank, d.seq))
            for delivery in due:
                delivery.state = "sending"
            return due

    def attempt_finished(self, delivery: Delivery, attempt: Attempt, final: bool = False) -> None:
        with self._lock:
            delivery.attempts.append(attempt)
            ok = attempt.status_code is not None and 200 <= attempt.status_code < 300
            mode = delivery.api_mode
            if ok:
                delivery.state = "delivered"
                self._failed_in_a_row[mode] = 0
                return
            if attempt.status_code == 410:  # Standard Webhooks: "disable me"
                delivery.state = "failed"
                self.disabled_endpoints.add(mode)
                return
            retries = self.config.retry_delays()
            done = len(delivery.attempts) - 1
            if final or done >= len(retries):
                delivery.state = "failed"
                self._failed_in_a_row[mode] = self._failed_in_a_row.get(mode, 0) + 1
                limit = self.config.disable_after_failed_deliveries
                if limit is not None and self._failed_in_a_row[mode] >= limit:
                    self.disabled_endpoints.add(mode)
                return
            delivery.state = "pending"
            delivery.next_attempt_at = self.clock.now() + retries[done]
            self._pending.append(delivery)

    def enable_endpoint(self, mode: Mode, recover: bool = False) -> list[Delivery]:
        """Re-enable a disabled webhook endpoint; ``recover`` re-sends what it missed."""
        with self._lock:
            self.disabled_endpoints.discard(mode)
            self._failed_in_a_row[mode] = 0
            recovered = []
            if recover:
                for d in self.deliveries:
                    if d.api_mode == mode and d.state in ("endpoint_disabled", "failed"):
                        d.state = "pending" if d.url else "no_url"
                        d.next_attempt_at = self.clock.now()
                        recovered.append(d)
                        if d.state == "pending":
                            self._pending.append(d)
        self._wakeup()
        return recovered
