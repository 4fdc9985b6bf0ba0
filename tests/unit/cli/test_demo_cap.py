"""`ehi-bridge demo --patients N`: up to 100 simulated patients, no more."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ehi_bridge import cli, demo


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    seen: list[tuple[Any, ...]] = []

    def fake_run_demo(*args: Any) -> int:
        seen.append(args)
        return 0

    def no_exit(code: int = 0) -> None:
        seen.append(("exit", code))

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    monkeypatch.setattr(cli, "_exit_now", no_exit)
    return seen


def _invoke(*args: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return CliRunner().invoke(cli.app, ["demo", *args])


def test_a_hundred_patients_are_allowed(calls: list[tuple[Any, ...]], tmp_path: Path) -> None:
    result = _invoke("--patients", "100", "--data-dir", str(tmp_path), "--port", "1")
    assert result.exit_code == 0, result.output
    assert calls == [(1, tmp_path, 100, False), ("exit", 0)]


def test_more_than_a_hundred_are_refused(calls: list[tuple[Any, ...]]) -> None:
    result = _invoke("--patients", "101")
    assert result.exit_code == 2
    assert calls == []
