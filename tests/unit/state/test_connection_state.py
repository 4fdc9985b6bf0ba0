from datetime import UTC, datetime, timedelta

from ehi_bridge.connections.state import (
    ConnectionState,
    confirm_reauthorized,
    on_authorization_revoked,
    on_connection_success,
    on_export_activity,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NEW = ConnectionState(None, None)


def test_success_authorizes_and_asks_for_an_export() -> None:
    result = on_connection_success(NEW, "authorized", T0)
    assert result.state.status == "authorized"
    assert result.request_export and result.changed


def test_success_twice_is_a_no_op() -> None:
    first = on_connection_success(NEW, "authorized", T0).state
    again = on_connection_success(first, "authorized", T0 + timedelta(seconds=5))
    assert not again.changed and not again.request_export
    assert again.state == first


def test_rejected_connection_does_not_request_export() -> None:
    result = on_connection_success(NEW, "rejected", T0)
    assert result.state.status == "rejected" and not result.request_export


def test_revocation_then_older_success_stays_revoked() -> None:
    revoked = on_authorization_revoked(NEW, T0 + timedelta(minutes=1)).state
    late = on_connection_success(revoked, "authorized", T0)
    assert late.state.status == "revoked" and not late.request_export


def test_success_then_revocation_cancels_exports() -> None:
    authorized = on_connection_success(NEW, "authorized", T0).state
    result = on_authorization_revoked(authorized, T0 + timedelta(minutes=1))
    assert result.state.status == "revoked" and result.cancel_exports


def test_success_after_revocation_asks_fasten_even_when_dated_later() -> None:
    # Fasten re-dates retries, so a stale success can carry the later date.
    revoked = on_authorization_revoked(NEW, T0).state
    result = on_connection_success(revoked, "authorized", T0 + timedelta(days=1))
    assert result.state.status == "revoked" and result.verify and not result.request_export


def test_confirmed_reconnect_authorizes_again_and_requests_export() -> None:
    revoked = on_authorization_revoked(NEW, T0).state
    result = confirm_reauthorized(revoked, T0 + timedelta(days=1))
    assert result.state.status == "authorized" and result.request_export
    assert not confirm_reauthorized(result.state, T0 + timedelta(days=2)).changed


def test_revocation_is_sticky_whatever_the_dates() -> None:
    authorized = on_connection_success(NEW, "authorized", T0 + timedelta(hours=1)).state
    result = on_authorization_revoked(authorized, T0)
    assert result.state.status == "revoked" and result.cancel_exports


def test_later_date_wins_between_authorized_and_rejected() -> None:
    rejected = on_connection_success(NEW, "rejected", T0 + timedelta(minutes=5)).state
    assert on_connection_success(rejected, "authorized", T0).state.status == "rejected"
    later = on_connection_success(rejected, "authorized", T0 + timedelta(minutes=9))
    assert later.state.status == "authorized" and later.request_export


def test_export_activity_only_fills_an_unknown_connection() -> None:
    assert on_export_activity(NEW, T0).state.status == "authorized"
    revoked = on_authorization_revoked(NEW, T0).state
    assert on_export_activity(revoked, T0 + timedelta(hours=1)).state.status == "revoked"
