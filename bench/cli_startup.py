"""CLI start-up: wall time of whole `ehi-bridge` processes, several runs each.

What it measures: from exec to exit of the installed console script (`.venv/bin/ehi-bridge`)
for `--help`, `stats --json` on a fresh migrated SQLite file, and `stats --help`; each
command runs once untimed (warm file cache), then N times; it prints min / median / max
and, for comparison, a bare `python -c pass` and the import of each heavy dependency.
CPU time (user + system of the child) is printed beside wall time: on a shared 2-core
machine the wall time includes waiting for a core, the CPU time much less so.
The target is ≤ 0.5 s for `--help` and `stats` (issue 12).

    .venv/bin/python bench/cli_startup.py            # 10 runs each
    .venv/bin/python bench/cli_startup.py --runs 20
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "ehi-bridge")


def timed(args: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds (user + system of the child) of each run."""
    subprocess.run(args, env=env, capture_output=True, check=True)  # warm-up, untimed
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(args, env=env, capture_output=True, check=True)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EHI_")}
        env["EHI_DATA_DIR"] = data_dir
        subprocess.run([CLI, "db", "upgrade"], env=env, capture_output=True, check=True)
        cases: list[tuple[str, list[str]]] = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("ehi-bridge --help", [CLI, "--help"]),
            ("ehi-bridge stats --help", [CLI, "stats", "--help"]),
            ("ehi-bridge stats --json", [CLI, "stats", "--json"]),
            ("ehi-bridge stats", [CLI, "stats"]),
        ]
        for module in ("typer", "pydantic_settings", "sqlalchemy", "sqlalchemy.orm"):
            cases.append((f"import {module}", [sys.executable, "-c", f"import {module}"]))
        print(f"{runs} runs each, seconds; CPU = user + system time of the process")
        print(f"{'command':<28}{'wall min':>9}{'median':>8}{'max':>8}{'CPU min':>9}{'median':>8}")
        for name, args in cases:
            walls, cpus = timed(args, env, runs)
            print(
                f"{name:<28}{min(walls):>9.3f}{statistics.median(walls):>8.3f}"
                f"{max(walls):>8.3f}{min(cpus):>9.3f}{statistics.median(cpus):>8.3f}"
            )
    load = os.getloadavg()
    print(f"load average while measuring: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
