"""The CLI's surface without a database: what `--help` loads, and the help text itself."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer

from ehi_bridge.cli import app, describe_error, main

HEAVY = ("sqlalchemy", "fastapi", "dbos", "alembic", "uvicorn", "httpx", "ehi_bridge.config")

PROBE = """
import sys
from ehi_bridge.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted({m for m in sys.modules for h in HEAVY if m == h or m.startswith(h + ".")})
print("LOADED", code, " ".join(heavy))
"""


@pytest.mark.parametrize(
    "args",
    [["--help"], ["stats", "--help"], ["auth", "user", "--help"], ["simulator", "--help"]],
    ids=" ".join,
)
def test_help_loads_no_database_or_web_stack(args: list[str]) -> None:
    """Start-up is instant because help never imports SQLAlchemy, FastAPI, DBOS and the
    like (their import is what took seconds; the timing itself is in bench/cli_startup.py)."""
    result = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("LOADED"))
    assert line.split(" ", 2)[1] == "0", result.stdout + result.stderr
    assert line.split(" ", 2)[2:] in ([], [""]), f"--help imported: {line}"
    assert "Usage" in result.stdout
    assert result.stderr == ""


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_help_text_has_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    commands = dict(_commands(typer.main.get_command(app)))
    assert ("auth", "token", "create") in commands and ("import",) in commands
    for path in commands:
        with pytest.raises(SystemExit) as exit:
            main([*path, "--help"])
        assert exit.value.code == 0
        text = capsys.readouterr().out
        assert "Usage" in text
        for markup in ("``", ":class:", ":mod:", ":func:", "[bold]", "[/]"):
            assert markup not in text, (path, markup, text)


def test_errors_describe_files_and_unexpected_failures_in_one_line() -> None:
    code, line = describe_error(FileNotFoundError(2, "No such file or directory", "/x/y"))
    assert (code, line) == (74, "No such file or directory: /x/y")
    code, line = describe_error(RuntimeError("first line\nsecond line"))
    assert code == 1
    assert line == "unexpected RuntimeError: first line (run with --debug for the traceback)"
