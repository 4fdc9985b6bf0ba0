import pytest
from sqlalchemy import select

from ehi_bridge.connections.models import Connection
from ehi_bridge.connections.service import record_widget_complete
from ehi_bridge.db.engine import Database

DATA = {
    "org_connection_id": "org-1",
    "endpoint_id": "ep",
    "brand_id": "br",
    "portal_id": "po",
    "platform_type": "epic",
    "external_id": "user-1",
}


def test_new_connection_is_pending_until_the_signed_webhook(db: Database) -> None:
    with db.session() as session:
        connection = record_widget_complete(session, dict(DATA), "test")
        assert (connection.status, connection.external_id) == ("pending", "user-1")
    with db.session() as session:  # repeat: same row, nothing duplicated
        record_widget_complete(session, dict(DATA), "test")
    with db.read_session() as session:
        rows = session.scalars(select(Connection)).all()
    assert [(r.org_connection_id, r.platform_type) for r in rows] == [("org-1", "epic")]


def test_a_connection_of_another_user_or_mode_is_refused(db: Database) -> None:
    with db.session() as session:
        record_widget_complete(session, dict(DATA), "test")
    with pytest.raises(ValueError, match="another user"), db.session() as session:
        record_widget_complete(session, {**DATA, "external_id": "intruder"}, "test")
    with pytest.raises(ValueError, match="test mode"), db.session() as session:
        record_widget_complete(session, dict(DATA), "live")
    with pytest.raises(ValueError, match="required"), db.session() as session:
        record_widget_complete(session, {**DATA, "org_connection_id": ""}, "test")
