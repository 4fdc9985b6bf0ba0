"""Imports every feature's models so ``Base.metadata`` is complete (Alembic, tests)."""

from ehi_bridge.alerts import models as alerts_models
from ehi_bridge.auth import models as auth_models
from ehi_bridge.connections import models as connections_models
from ehi_bridge.db.base import Base
from ehi_bridge.exports import models as exports_models
from ehi_bridge.outbox import models as outbox_models
from ehi_bridge.records import models as records_models
from ehi_bridge.sources import models as sources_models
from ehi_bridge.webhooks import models as webhooks_models

__all__ = [
    "Base",
    "alerts_models",
    "auth_models",
    "connections_models",
    "exports_models",
    "outbox_models",
    "records_models",
    "sources_models",
    "webhooks_models",
]
