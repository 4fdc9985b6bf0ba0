"""Run by `make test` before the suite. A missing PostgreSQL or Chromium never turns into
silent skips: when this runs as root it installs Chromium (apt-get) and starts PostgreSQL
(pg_ctlcluster), as `.ci/run` does; otherwise it stops at once with the command to run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.support import pg_available

CHROMIUM = "/usr/bin/chromium"
APT_INSTALL = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium"
PG_START = "pg_ctlcluster --skip-systemctl-redirect {version} main start"

Runner = Callable[[Sequence[str]], int]


def chromium_installed() -> bool:
    return bool(shutil.which("chromium") or Path(CHROMIUM).exists())


def _run(command: Sequence[str]) -> int:
    print(f"preflight: running {' '.join(command)}", file=sys.stderr)
    return subprocess.run(command, check=False).returncode


def _pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    return versions[0] if versions else "<version>"


def ensure_chromium(is_root: bool, installed: Callable[[], bool], run: Runner) -> str | None:
    """None when Chromium is there (installed now if we may); else the line to print."""
    if installed():
        return None
    if is_root and shutil.which("apt-get"):
        run(["sh", "-c", APT_INSTALL + " >/dev/null"])
        if installed():
            return None
    prefix = "" if is_root else "sudo "
    return (
        "headless Chromium (Debian package 'chromium') is missing and the browser tests need "
        f"it; install it with:\n    {prefix}sh -c '{APT_INSTALL}'"
    )


def ensure_postgres(is_root: bool, available: Callable[[], bool], run: Runner) -> str | None:
    if available():
        return None
    command = PG_START.format(version=_pg_version())
    if is_root and shutil.which("pg_ctlcluster"):
        run(command.split())
        for _ in range(30):
            if available():
                return None
            time.sleep(1)
    prefix = "" if is_root else "sudo "
    return (
        "PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres, trust auth); start it "
        f"with:\n    {prefix}{command}"
    )


def main(
    is_root: bool | None = None,
    chromium: Callable[[], bool] = chromium_installed,
    postgres: Callable[[], bool] = pg_available,
    run: Runner = _run,
) -> int:
    root = os.geteuid() == 0 if is_root is None else is_root
    problems = [
        p
        for p in (ensure_postgres(root, postgres, run), ensure_chromium(root, chromium, run))
        if p is not None
    ]
    for problem in problems:
        print(f"preflight: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
