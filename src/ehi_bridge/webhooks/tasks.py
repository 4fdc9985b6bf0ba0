"""Durable background work for inbox events (DBOS workflows)."""

from __future__ import annotations

from dbos import DBOS

from ehi_bridge import runtime
from ehi_bridge.webhooks import service


@DBOS.step()
def _apply_step(inbox_id: int) -> dict[str, object]:
    rt = runtime.current()
    return service.apply_event(rt.db, rt.settings, inbox_id).as_dict()


@DBOS.step()
def _record_failure_step(inbox_id: int, attempt: int, error: str) -> None:
    service.record_failure(runtime.current().db, inbox_id, attempt, error)


@DBOS.step()
def _park_step(inbox_id: int) -> None:
    rt = runtime.current()
    alert = service.park(rt.db, inbox_id)
    if alert is not None:
        from ehi_bridge.exports.tasks import raise_alert_now

        raise_alert_now(alert.kind, alert.dedup_key, alert.message, alert.context)


@DBOS.workflow()
def apply_event_workflow(inbox_id: int) -> str:
    """Apply one event: retried with exponential backoff, parked after the last attempt."""
    settings = runtime.current().settings
    attempts = max(1, settings.event_max_attempts)
    for attempt in range(1, attempts + 1):
        try:
            follow = _apply_step(inbox_id)
        except Exception as exc:
            # Only our own messages are stored: a driver's text could quote row values.
            reason = str(exc) if isinstance(exc, service.EventRejected) else type(exc).__name__
            _record_failure_step(inbox_id, attempt, reason)
            if attempt == attempts:
                _park_step(inbox_id)
                return "parked"
            DBOS.sleep(settings.event_retry_interval_seconds * 2 ** (attempt - 1))
            continue
        from ehi_bridge.exports.tasks import launch_follow_ups

        launch_follow_ups(follow)
        return "applied"
    return "parked"
