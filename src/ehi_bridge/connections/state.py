"""The connection state machine. Pure: no I/O, unit-tested without a database.

Events can arrive repeated and in any order, and Fasten re-dates every retry (``date`` is the
attempt time), so dates cannot order a revocation against a success. Rules:

- A revocation always applies: ``revoked`` is sticky.
- A success for a revoked connection is either stale (overtaken by the revocation) or a real
  reconnect; the transition asks for verification and the caller asks Fasten
  (``GET /bridge/org_connection/{id}``), then applies ``confirm_reauthorized``.
- Between ``authorized`` and ``rejected`` the later ``date`` wins. Repeats are no-ops.
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
    # A ``smart`` connection whose grant the EHR refused (``invalid_grant``): the patient
    # must authorize again.
    REAUTH_REQUIRED = "reauth_required"

    ALL = (PENDING, AUTHORIZED, REJECTED, REVOKED, MANUAL, REAUTH_REQUIRED)


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
    verify: bool = False  # ask Fasten whether a success after a revocation is a reconnect


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
    if state.status == ConnectionStatus.REVOKED:
        return Transition(state, changed=False, verify=target == ConnectionStatus.AUTHORIZED)
    return _to(state, target, at)


def on_authorization_revoked(state: ConnectionState, at: datetime) -> Transition:
    if state.status == ConnectionStatus.REVOKED:
        return Transition(state, changed=False)
    return Transition(
        ConnectionState(ConnectionStatus.REVOKED, at), changed=True, cancel_exports=True
    )


def confirm_reauthorized(state: ConnectionState, at: datetime) -> Transition:
    """Fasten confirmed a revoked connection is authorized again (a reconnect)."""
    if state.status != ConnectionStatus.REVOKED:
        return Transition(state, changed=False)
    return Transition(
        ConnectionState(ConnectionStatus.AUTHORIZED, at), changed=True, request_export=True
    )


def on_export_activity(state: ConnectionState, at: datetime) -> Transition:
    """An export event for a connection we never saw connect: it must be authorized."""
    if state.status is None:
        return Transition(ConnectionState(ConnectionStatus.AUTHORIZED, at), changed=True)
    return Transition(state, changed=False)
