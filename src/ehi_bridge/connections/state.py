"""The connection state machine. Pure: no I/O, unit-tested without a database.

Events can arrive repeated and in any order. The status is a last-writer-wins register keyed
by the event's ``date``: an event older than the status it would replace is recorded but does
not change the status (revocation before success ends revoked). Repeats are no-ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class ConnectionStatus:
    PENDING = "pending"
    AUTHORIZED = "authorized"
    REJECTED = "rejected"
    REVOKED = "revoked"
    MANUAL = "manual"

    ALL = (PENDING, AUTHORIZED, REJECTED, REVOKED, MANUAL)


@dataclass(frozen=True, slots=True)
class ConnectionState:
    status: str | None
    changed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Transition:
    state: ConnectionState
    changed: bool
    request_export: bool = False
    cancel_exports: bool = False


def _newer(state: ConnectionState, at: datetime) -> bool:
    return state.changed_at is None or at > state.changed_at


def _to(state: ConnectionState, status: str, at: datetime) -> Transition:
    if state.status == status:
        return Transition(state, changed=False)
    if state.status is not None and not _newer(state, at):
        return Transition(state, changed=False)  # stale: a later event already decided
    return Transition(
        ConnectionState(status, at),
        changed=True,
        request_export=status == ConnectionStatus.AUTHORIZED,
        cancel_exports=status == ConnectionStatus.REVOKED,
    )


def on_connection_success(
    state: ConnectionState, connection_status: str | None, at: datetime
) -> Transition:
    """``patient.connection_success``: authorized (or rejected, as the payload says)."""
    target = (
        ConnectionStatus.REJECTED
        if (connection_status or "").lower() == ConnectionStatus.REJECTED
        else ConnectionStatus.AUTHORIZED
    )
    return _to(state, target, at)


def on_authorization_revoked(state: ConnectionState, at: datetime) -> Transition:
    return _to(state, ConnectionStatus.REVOKED, at)


def on_export_activity(state: ConnectionState, at: datetime) -> Transition:
    """An export event for a connection we never saw connect: it must be authorized."""
    if state.status is None:
        return Transition(ConnectionState(ConnectionStatus.AUTHORIZED, at), changed=True)
    return Transition(state, changed=False)
