"""`make test`'s preflight: a missing Chromium is installed when it may be, or the run stops
with the exact command; never a silent skip."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests import preflight


class Apt:
    """Stands in for the machine: records commands; an install makes Chromium appear."""

    def __init__(self, works: bool = True) -> None:
        self.works = works
        self.commands: list[list[str]] = []
        self.present = False

    def run(self, command: Sequence[str]) -> int:
        self.commands.append(list(command))
        if "apt-get install -y chromium" in " ".join(command) and self.works:
            self.present = True
        return 0 if self.works else 100

    def chromium(self) -> bool:
        return self.present


def test_as_root_it_installs_chromium_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.shutil, "which", lambda name: f"/usr/bin/{name}")
    apt = Apt()
    assert (
        preflight.main(is_root=True, chromium=apt.chromium, postgres=lambda: True, run=apt.run) == 0
    )
    assert len(apt.commands) == 1 and "apt-get install -y chromium" in apt.commands[0][-1]


def test_without_root_it_stops_with_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    apt = Apt()
    assert (
        preflight.main(is_root=False, chromium=apt.chromium, postgres=lambda: True, run=apt.run)
        == 1
    )
    assert apt.commands == []
    err = capsys.readouterr().err
    assert (
        "sudo sh -c 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium'"
        in err
    )


def test_a_failed_install_stops_with_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(preflight.shutil, "which", lambda name: f"/usr/bin/{name}")
    apt = Apt(works=False)
    assert (
        preflight.main(is_root=True, chromium=apt.chromium, postgres=lambda: True, run=apt.run) == 1
    )
    assert "apt-get install -y chromium" in capsys.readouterr().err


def test_postgres_down_without_root_names_the_start_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    apt = Apt()
    apt.present = True
    assert (
        preflight.main(is_root=False, chromium=apt.chromium, postgres=lambda: False, run=apt.run)
        == 1
    )
    assert "pg_ctlcluster --skip-systemctl-redirect" in capsys.readouterr().err


def test_all_present_runs_nothing() -> None:
    apt = Apt()
    apt.present = True
    assert (
        preflight.main(is_root=True, chromium=apt.chromium, postgres=lambda: True, run=apt.run) == 0
    )
    assert apt.commands == []
