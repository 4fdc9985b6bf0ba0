"""A faithful fake of Fasten Connect that speaks the real protocol over real HTTP.

Public API: :class:`SimulatorServer` (runs it in a background thread), :class:`SimulatorConfig`,
:class:`Simulator` (the state; thread-safe methods such as ``connect``, ``revoke``,
``set_behaviour``, ``advance_clock``), :class:`Behaviour`, and the export-file builders in
:mod:`ehi_bridge.simulator.datasets`.
"""

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
