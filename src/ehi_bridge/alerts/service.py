"""Raising operator alerts: deduplicated, PHI-free, never failing the caller.

What an alert may carry (enforced here, before anything is stored or sent):

* ``kind``: one of :data:`ALERT_KINDS` (other ``snake_case`` kinds are accepted too);
* ``dedup_key``: ids only, e.g. ``export_failed:12`` (ASCII, at most 255 characters);
* ``message``: a short sentence built from ids, counts and reasons. URLs and e-mail
  addresses are replaced by ``[redacted]``, control characters removed, 500 characters max;
* ``context``: at most 20 ``snake_case`` keys whose values are ``str`` or ``int`` (None is
  dropped, bool becomes int, anything else becomes ``"[redacted:type]"``). String values
  that look like a URL or an e-mail address become ``"[redacted:url]"``/``"[redacted]"``;
  keys naming personal data or credentials (``name``, ``birth_date``, ``address``,
  ``email``, ``mrn``, ``body``, ``url``, ``token`` …) get ``"[redacted]"``.

Never pass FHIR content, patient names, demographics, webhook bodies or download links.

Deduplication: one ``alerts`` row per ``dedup_key``. Each occurrence bumps ``count`` and
``last_at`` and is logged; external sinks (Slack, HTTP) are sent to again only when the
last successful delivery is older than the window (default 1 h) or never happened.
Sink failures are stored in ``delivery_error`` and logged; they never raise.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import structlog
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from ehi_bridge.alerts import repository
from ehi_bridge.alerts.models import Alert
from ehi_bridge.alerts.sinks import AlertMessage, AlertSink, sinks_from_settings
from ehi_bridge.config import Settings
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.ops.metrics import alerts_sent_total

log = structlog.get_logger(__name__)

# --- kinds and severities ------------------------------------------------------------------

EXPORT_FAILED: Final = "export_failed"
EXPORT_TIMED_OUT: Final = "export_timed_out"
EXPORT_EXPIRED: Final = "export_expired"
DOWNLOAD_REFUSED: Final = "download_refused"
SIGNATURE_FAILURES_SPIKE: Final = "signature_failures_spike"
EVENT_PARKED: Final = "event_parked"
INGEST_PARTIAL: Final = "ingest_partial"
OWNERSHIP_CONFLICT: Final = "ownership_conflict"
EXPORT_STALLED: Final = "export_stalled"
SOURCE_REAUTH_REQUIRED: Final = "source_reauth_required"  # a SMART grant was refused
SOURCE_SYNC_FAILED: Final = "source_sync_failed"
SOURCE_SYNC_PARTIAL: Final = "source_sync_partial"
ALERT_KINDS: Final = (
    EXPORT_FAILED,
    EXPORT_TIMED_OUT,
    EXPORT_EXPIRED,
    DOWNLOAD_REFUSED,
    SIGNATURE_FAILURES_SPIKE,
    EVENT_PARKED,
    INGEST_PARTIAL,
    OWNERSHIP_CONFLICT,
    EXPORT_STALLED,
    SOURCE_REAUTH_REQUIRED,
    SOURCE_SYNC_FAILED,
    SOURCE_SYNC_PARTIAL,
)
SEVERITIES: Final = ("info", "warning", "error", "critical")

DEFAULT_DEDUP_WINDOW: Final = timedelta(hours=1)

# --- the PHI guard ---------------------------------------------------------------------------

MAX_MESSAGE_CHARS: Final = 500
MAX_VALUE_CHARS: Final = 200
MAX_CONTEXT_KEYS: Final = 20
REDACTED: Final = "[redacted]"
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_KIND = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_URL = re.compile(r"\b[a-z][a-z0-9+.\-]*://\S*|\bwww\.\S+", re.IGNORECASE)
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[a-z]{2,}", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
# Key words (split on "_") that name personal data, free text or credentials.
_FORBIDDEN_KEY_WORDS: Final = frozenset(
    {
        "name", "given", "family", "birth", "birthdate", "dob", "address", "street",
        "city", "zip", "postal", "phone", "telecom", "email", "ssn", "mrn", "gender",
        "body", "payload", "content", "raw", "url", "uri", "link", "href", "secret",
        "token", "password", "authorization", "signature", "note", "text",
    }
)  # fmt: skip


def sanitize_message(message: str) -> str:
    text = _URL.sub(REDACTED, str(message))
    text = _EMAIL.sub(REDACTED, text)
    text = _CONTROL.sub(" ", text).strip()
    return text[:MAX_MESSAGE_CHARS]


def _sanitize_value(value: object) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return "[redacted:type]"
    if _URL.search(value):
        return "[redacted:url]"
    if _EMAIL.search(value):
        return REDACTED
    return _CONTROL.sub(" ", value)[:MAX_VALUE_CHARS]


def sanitize_context(context: Mapping[str, object] | None) -> dict[str, str | int]:
    """The PHI-free version of ``context`` (see the module docstring for the rules)."""
    clean: dict[str, str | int] = {}
    for key, value in (context or {}).items():
        if len(clean) >= MAX_CONTEXT_KEYS:
            break
        if not isinstance(key, str) or not _KEY.match(key):
            continue
        if _FORBIDDEN_KEY_WORDS.intersection(key.split("_")):
            clean[key] = REDACTED
            continue
        safe = _sanitize_value(value)
        if safe is not None:
            clean[key] = safe
    return clean


def _sanitize_key(dedup_key: str) -> str:
    key = _CONTROL.sub("", str(dedup_key))
    key = _URL.sub(REDACTED, key)
    return key.encode("ascii", "replace").decode("ascii")[:255] or "unkeyed"


# --- raising ---------------------------------------------------------------------------------


def raise_alert(
    db_or_session: Database | Session,
    settings: Settings,
    kind: str,
    dedup_key: str,
    message: str,
    severity: str = "warning",
    context: Mapping[str, str | int | None] | None = None,
    *,
    sinks: Sequence[AlertSink] | None = None,
    window: timedelta = DEFAULT_DEDUP_WINDOW,
    now: datetime | None = None,
) -> Alert:
    """Record one occurrence of an alert and, unless it is a repeat inside ``window``,
    send it to the external sinks. Synchronous (sinks do blocking HTTP with a 5 s
    timeout): from async code call it through ``asyncio.to_thread``.

    With a :class:`Database` the row is written in its own short transaction, the sinks
    are called with no transaction open, and the outcome is stored in a second one.
    With a :class:`Session` the row joins the caller's transaction and the sinks are
    called after that transaction commits (never if it rolls back); the returned row's
    delivery fields are then not yet filled in.

    Sink failures never raise (they land in ``delivery_error``); database errors do.
    """
    if not _KIND.match(kind):
        raise ValueError("alert kind must be snake_case (see ALERT_KINDS)")
    severity = severity if severity in SEVERITIES else "warning"
    moment = now or utcnow()
    fields = _Fields(
        kind,
        _sanitize_key(dedup_key),
        severity,
        sanitize_message(message),
        sanitize_context(context),
    )
    chosen = list(sinks) if sinks is not None else sinks_from_settings(settings)

    if isinstance(db_or_session, Session):
        session = db_or_session
        row, send_external = _record(session, fields, moment, window, chosen)
        session.flush()
        _after_commit(session, row.id, send_external, chosen)
        return row

    with db_or_session.session() as session:
        row, send_external = _record(session, fields, moment, window, chosen)
        session.flush()
        alert_message = _message(row)
    delivered_at, error = _deliver(alert_message, chosen, send_external, moment)
    with db_or_session.session() as session:
        repository.record_delivery(session, row.id, delivered_at, error)
    if delivered_at is not None:
        row.delivered_at = delivered_at
    row.delivery_error = error
    return row


@dataclass(frozen=True, slots=True)
class _Fields:
    kind: str
    dedup_key: str
    severity: str
    message: str
    context: dict[str, str | int]


def _record(
    session: Session,
    fields: _Fields,
    now: datetime,
    window: timedelta,
    sinks: Sequence[AlertSink],
) -> tuple[Alert, bool]:
    row, created, _previous = repository.record_occurrence(
        session,
        kind=fields.kind,
        dedup_key=fields.dedup_key,
        severity=fields.severity,
        message=fields.message,
        context=fields.context,
        now=now,
    )
    send_external = (
        created
        or row.delivered_at is None
        or row.delivery_error is not None
        or now - row.delivered_at >= window
    )
    return row, send_external and any(s.external for s in sinks)


def _message(row: Alert) -> AlertMessage:
    return AlertMessage(
        alert_id=row.id,
        kind=row.kind,
        severity=row.severity,
        message=row.message,
        dedup_key=row.dedup_key,
        count=row.count,
        first_at=row.first_at,
        last_at=row.last_at,
        context=dict(row.context or {}),
    )


def _deliver(
    alert: AlertMessage, sinks: Sequence[AlertSink], send_external: bool, now: datetime
) -> tuple[datetime | None, str | None]:
    """Send to the sinks; (delivered_at or None, error summary or None). Never raises."""
    errors: list[str] = []
    delivered_external = False
    attempted_external = False
    for sink in sinks:
        if sink.external and not send_external:
            continue
        attempted_external = attempted_external or sink.external
        try:
            sink.send(alert)
        except Exception as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            errors.append(f"{getattr(sink, 'name', type(sink).__name__)}: {reason}"[:200])
            log.warning(
                "alert sink failed",
                alert_id=alert.alert_id,
                alert_kind=alert.kind,
                sink=getattr(sink, "name", type(sink).__name__),
                reason=str(reason)[:100],
            )
        else:
            delivered_external = delivered_external or sink.external
    if delivered_external:
        _count_sent(alert.kind)
    if errors:
        return None, "; ".join(errors)[:1000]
    if attempted_external or not any(s.external for s in sinks):
        return now, None
    return None, None  # a suppressed repeat: the earlier delivery stands


def _count_sent(kind: str) -> None:
    try:
        alerts_sent_total.labels(kind=kind).inc()
    except Exception:  # pragma: no cover - metrics must never break alerting
        log.debug("alert metric not updated")


_PENDING_KEY = "ehi_bridge.alerts.pending"
_HOLD_KEY = "ehi_bridge.alerts.hold"


def hold_deliveries(session: Session) -> None:
    """Keep this session's alerts after its commit until :func:`deliver_held` (a caller that
    commits inside a lock, e.g. the SQLite write gate, sends them once it has let go)."""
    session.info[_HOLD_KEY] = True


def deliver_held(session: Session) -> None:
    """Send the alerts a committed, held session raised (nothing if it rolled back)."""
    session.info[_HOLD_KEY] = False
    _deliver_pending(session)


def _after_commit(
    session: Session, alert_id: int, send_external: bool, sinks: Sequence[AlertSink]
) -> None:
    """Queue delivery for when the caller's transaction commits (dropped on rollback)."""
    pending: list[tuple[int, bool, Sequence[AlertSink]]] | None = session.info.get(_PENDING_KEY)
    if pending is None:
        pending = []
        session.info[_PENDING_KEY] = pending
        event.listen(session, "after_commit", _deliver_pending)
        event.listen(session, "after_rollback", _drop_pending)
    pending.append((alert_id, send_external, sinks))


def _drop_pending(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint: its alert rows are gone, and delivery skips missing rows
    pending = session.info.get(_PENDING_KEY)
    if pending:
        log.info("alerts dropped with a rolled back transaction", alerts=len(pending))
        pending.clear()


def _deliver_pending(session: Session) -> None:
    # SQLAlchemy also says "after_commit" when a savepoint is released: the rows are not
    # committed yet (on SQLite the caller still holds the write lock), so wait for the root.
    if session.in_nested_transaction() or session.info.get(_HOLD_KEY):
        return
    pending: list[tuple[int, bool, Sequence[AlertSink]]] = session.info.get(_PENDING_KEY) or []
    if not pending:
        return
    # One entry per alert row (a rolled back savepoint's id can be taken again).
    items = list({item[0]: item for item in pending}.values())
    pending.clear()
    bind = session.get_bind()
    engine: Engine = bind if isinstance(bind, Engine) else bind.engine
    for alert_id, send_external, sinks in items:
        try:
            with Session(engine) as other:
                row = other.get(Alert, alert_id)
                if row is None:
                    continue
                alert_message = _message(row)
            moment = utcnow()
            delivered_at, error = _deliver(alert_message, sinks, send_external, moment)
            with Session(engine) as other, other.begin():
                repository.record_delivery(other, alert_id, delivered_at, error)
        except Exception as exc:  # never into the committing caller
            log.error("alert delivery failed", alert_id=alert_id, error_type=type(exc).__name__)


# --- signature failure spikes ----------------------------------------------------------------


class SignatureFailureTracker:
    """Tells when webhook signature failures spike: ``threshold`` failures within
    ``window_seconds``. Pure and in-process (time is passed in); thread-safe; keeps at
    most ``threshold`` timestamps. After it fires it stays quiet for ``cooldown_seconds``
    (default: the window), so a sustained attack alerts once per cooldown.
    """

    def __init__(
        self,
        threshold: int = 20,
        window_seconds: float = 60.0,
        cooldown_seconds: float | None = None,
    ) -> None:
        if threshold < 1 or window_seconds <= 0:
            raise ValueError("threshold must be >= 1 and window_seconds > 0")
        self.threshold = threshold
        self.window_seconds = window_seconds
        self.cooldown_seconds = window_seconds if cooldown_seconds is None else cooldown_seconds
        self._times: deque[float] = deque(maxlen=threshold)
        self._last_fired: float | None = None
        self._lock = threading.Lock()

    def record(self, now: float) -> bool:
        """Count one failure at ``now`` (seconds, monotonic or Unix); True when the
        caller should raise a ``signature_failures_spike`` alert."""
        with self._lock:
            self._times.append(now)
            if self._count(now) < self.threshold:
                return False
            if self._last_fired is not None and now - self._last_fired < self.cooldown_seconds:
                return False
            self._last_fired = now
            return True

    def count(self, now: float) -> int:
        """Failures within the window ending at ``now`` (capped at ``threshold``)."""
        with self._lock:
            return self._count(now)

    def _count(self, now: float) -> int:
        horizon = now - self.window_seconds
        return sum(1 for t in self._times if t > horizon)


def raise_signature_spike(
    db: Database | Session,
    settings: Settings,
    mode: str,
    failures: int,
    window_seconds: float,
    *,
    sinks: Sequence[AlertSink] | None = None,
    now: datetime | None = None,
) -> Alert:
    """The standard alert for a tracker that fired (one dedup key per mode)."""
    return raise_alert(
        db,
        settings,
        kind=SIGNATURE_FAILURES_SPIKE,
        dedup_key=f"{SIGNATURE_FAILURES_SPIKE}:{mode}",
        message=(
            f"{failures} webhook deliveries with bad signatures within "
            f"{int(window_seconds)} s ({mode} mode)"
        ),
        severity="error",
        context={"mode": mode, "failures": failures, "window_seconds": int(window_seconds)},
        sinks=sinks,
        now=now,
    )
