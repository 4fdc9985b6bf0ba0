"""What happens to a connection's records when its authorization is revoked."""

from __future__ import annotations

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from ehi_bridge.records.models import Resource


def apply_revocation(session: Session, connection_id: str, policy: str) -> int:
    """``keep``: rows stay, marked revoked. ``purge``: rows are deleted. Returns rows touched."""
    if policy == "purge":
        result = session.execute(delete(Resource).where(Resource.connection_id == connection_id))
    else:
        result = session.execute(
            update(Resource)
            .where(Resource.connection_id == connection_id, Resource.revoked.is_(False))
            .values(revoked=True)
        )
    return int(result.rowcount)  # type: ignore[attr-defined]
