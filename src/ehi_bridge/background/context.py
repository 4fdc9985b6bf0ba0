"""The background process's shared parts, found by the durable workflows.

Workflows are module-level functions the engine calls by name, so they cannot be handed
their database; the runtime installs this context when it starts and removes it when it
stops.
"""

from __future__ import annotations

from dataclasses import dataclass

from ehi_bridge.background.limits import StageLimits
from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database


@dataclass(frozen=True)
class BackgroundContext:
    settings: Settings
    db: Database
    limits: StageLimits


_current: BackgroundContext | None = None


def install(context: BackgroundContext | None) -> None:
    global _current
    _current = context


def current() -> BackgroundContext:
    if _current is None:
        raise RuntimeError("background work is not running in this process")
    return _current
