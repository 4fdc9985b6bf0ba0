"""The export state machine. Pure: no I/O.

``transition(status, event)`` returns the next status, or ``None`` when the event does not
apply in that status (a repeat, or too late to matter). Late successes are still processed:
``timed_out``, ``failed`` and ``expired`` are not dead ends for a success webhook.
"""

from __future__ import annotations


class ExportStatus:
    REQUESTED = "requested"  # we decided to ask Fasten; no task id yet
    PENDING = "pending"  # Fasten accepted it; waiting for the webhook
    DOWNLOADING = "downloading"
    INGESTING = "ingesting"
    COMPLETE = "complete"
    PARTIAL = "partial"  # ingested, but counts disagree with Fasten's stats
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"  # the file's 24 h life ended before we had it
    CANCELLED = "cancelled"

    ALL = (
        REQUESTED,
        PENDING,
        DOWNLOADING,
        INGESTING,
        COMPLETE,
        PARTIAL,
        FAILED,
        TIMED_OUT,
        EXPIRED,
        CANCELLED,
    )
    WAITING = (REQUESTED, PENDING, TIMED_OUT)
    ACTIVE = (REQUESTED, PENDING, TIMED_OUT, DOWNLOADING, INGESTING)
    DONE = (COMPLETE, PARTIAL)


class ExportEvent:
    TASK_CREATED = "task_created"
    SUCCEEDED = "succeeded"  # success webhook
    FAILED = "failed"  # failure webhook, or status poll says failed
    DEADLINE_PASSED = "deadline_passed"
    DOWNLOADED = "downloaded"
    INGESTED_COMPLETE = "ingested_complete"
    INGESTED_PARTIAL = "ingested_partial"
    FILE_GONE = "file_gone"
    DOWNLOAD_REFUSED = "download_refused"
    REVOKED = "revoked"
    SYNC_FAILED = "sync_failed"  # a smart sync could not finish (sources/)


S, E = ExportStatus, ExportEvent

_TABLE: dict[str, dict[str, str]] = {
    E.TASK_CREATED: {S.REQUESTED: S.PENDING},
    E.SUCCEEDED: {
        S.REQUESTED: S.DOWNLOADING,
        S.PENDING: S.DOWNLOADING,
        S.TIMED_OUT: S.DOWNLOADING,
        S.FAILED: S.DOWNLOADING,
        S.EXPIRED: S.DOWNLOADING,
    },
    E.FAILED: {S.REQUESTED: S.FAILED, S.PENDING: S.FAILED, S.TIMED_OUT: S.FAILED},
    E.DEADLINE_PASSED: {S.REQUESTED: S.TIMED_OUT, S.PENDING: S.TIMED_OUT},
    E.DOWNLOADED: {S.DOWNLOADING: S.INGESTING},
    E.INGESTED_COMPLETE: {S.INGESTING: S.COMPLETE, S.DOWNLOADING: S.COMPLETE},
    E.INGESTED_PARTIAL: {S.INGESTING: S.PARTIAL, S.DOWNLOADING: S.PARTIAL},
    E.FILE_GONE: {S.DOWNLOADING: S.EXPIRED, S.PENDING: S.EXPIRED, S.TIMED_OUT: S.EXPIRED},
    E.DOWNLOAD_REFUSED: {S.DOWNLOADING: S.FAILED},
    E.REVOKED: {status: S.CANCELLED for status in S.ACTIVE},
    E.SYNC_FAILED: {S.DOWNLOADING: S.FAILED, S.INGESTING: S.FAILED},
}


def transition(status: str, event: str) -> str | None:
    return _TABLE[event].get(status)
