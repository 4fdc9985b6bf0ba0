"""A faithful fake of Fasten Connect that speaks the real protocol over real HTTP.

Public API: :class:`SimulatorServer` (runs it in a background thread), :class:`SimulatorConfig`,
:class:`Simulator` (the state; thread-safe methods such as ``connect``, ``revoke``,
``set_behaviour``, ``advance_clock``), :class:`Behaviour`, and the export-file builders in
:mod:`ehi_bridge.simulator.datasets`.

The names load on first use (PEP 562), so importing a submodule, such as the CLI's
``ehi_bridge.simulator.cli`` for ``ehi-bridge --help``, does not start FastAPI.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ehi_bridge.simulator.config import ModeConfig, SimulatorConfig
    from ehi_bridge.simulator.datasets import (
        ExportStats,
        PatientInfo,
        build_patient_export,
        export_stats,
        list_patients,
    )
    from ehi_bridge.simulator.server import SimulatorServer
    from ehi_bridge.simulator.state import (
        FAILURE_REASONS,
        Behaviour,
        Connection,
        Delivery,
        Export,
        Simulator,
        SimulatorError,
    )

__all__ = [
    "FAILURE_REASONS",
    "Behaviour",
    "Connection",
    "Delivery",
    "Export",
    "ExportStats",
    "ModeConfig",
    "PatientInfo",
    "Simulator",
    "SimulatorConfig",
    "SimulatorError",
    "SimulatorServer",
    "build_patient_export",
    "export_stats",
    "list_patients",
]

_MODULE_OF = {
    "Behaviour": "state",
    "Connection": "state",
    "Delivery": "state",
    "Export": "state",
    "ExportStats": "datasets",
    "FAILURE_REASONS": "state",
    "ModeConfig": "config",
    "PatientInfo": "datasets",
    "Simulator": "state",
    "SimulatorConfig": "config",
    "SimulatorError": "state",
    "SimulatorServer": "server",
    "build_patient_export": "datasets",
    "export_stats": "datasets",
    "list_patients": "datasets",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
