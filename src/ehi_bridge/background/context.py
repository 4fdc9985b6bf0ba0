"""The background process's shared parts, found by the durable workflows.

Workflows are module-level functions the engine calls by name, so they cannot be handed
their database; the runtime installs this context when it starts and removes it when it
stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ehi_bridge.background.limits import StageLimits
from ehi_bridge.config import Mode, Settings
from ehi_bridge.db.engine import Database
from ehi_bridge.fasten.client import FastenClient, client_for_mode
from ehi_bridge.sources.fetch import HostLimiter


@dataclass(frozen=True)
class BackgroundContext:
    settings: Settings
    db: Database
    limits: StageLimits
    _clients: dict[Mode, FastenClient] = field(default_factory=dict)
    # SMART syncs: requests in flight per EHR host, across all syncs of this process.
    source_hosts: HostLimiter = field(default_factory=HostLimiter)

    def fasten(self, mode: Mode) -> FastenClient:
        """The process's client for ``mode``, kept for its connection pools (all workflows
        run on one event loop). Built on first use: a mode without credentials raises."""
        client = self._clients.get(mode)
        if client is None:
            client = self._clients[mode] = client_for_mode(self.settings, mode)
        return client


_current: BackgroundContext | None = None


def install(context: BackgroundContext | None) -> None:
    global _current
    _current = context


def current() -> BackgroundContext:
    if _current is None:
        raise RuntimeError("background work is not running in this process")
    return _current
