"""Run before the suite: under CI=true, a missing PostgreSQL or Chromium is a failure."""

from __future__ import annotations

import shutil
import sys

from tests.support import IN_CI, pg_available

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    problems = []
    if not pg_available():
        problems.append("PostgreSQL is not reachable at 127.0.0.1:5432")
    if not shutil.which("chromium") and not shutil.which(CHROMIUM):
        problems.append("headless Chromium (Debian package 'chromium') is not installed")
    for problem in problems:
        print(f"preflight: {problem}", file=sys.stderr)
    if problems and IN_CI:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
