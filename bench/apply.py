"""Background processing alone: inbox events applied per second, draining a backlog.

Builds a backlog of N signed deliveries (default 100,000) through real HTTP: it starts
``ehi-bridge serve --no-background`` on a fresh database (SQLite file or a throwaway
PostgreSQL database), posts every delivery once (``bench/backlog.py``: asyncio keep-alive
client, 32 connections, each delivery signed as it is sent) and stops it, so the rows are
exactly what the receiver writes and all wait in ``received``. Then it starts the background
processing as a user runs it, ``ehi-bridge worker`` with the same ``EHI_DATABASE_URL`` and
``EHI_DATA_DIR``, and polls the inbox (``SELECT status, count(*)``, every 0.25 s) until every
row is ``applied``, ``ignored`` or ``parked``. Printed: seconds from the worker's start
(start-up included), seconds from its first applied row, events/s over both, the worker's
CPU seconds and peak RSS (its process tree), and the statuses at the end.

Mixes: ``test`` is all ``webhook.test``; ``onboarding`` is, per distinct connection, a
``patient.connection_success`` and an export event (9 in 10 ``ehi_export_success``, 1 in 10
``ehi_export_failed``), in blocks of 250 connections. ``EHI_AUTO_REQUEST_EXPORT=false``, so a
connection does not ask Fasten for an export; an export success links to a host off the
download allow-list, so the download it starts is refused without network. It measures
applying events and starting their follow-ups, not exports.

    python bench/apply.py [--backend sqlite|postgres|both] [--events 100000] [--mix test]

Targets (issue 9): >= 5,000 events/s on SQLite, >= 3,000/s on PostgreSQL. ``--timeout``
bounds the drain; a run that times out reports the rate over what was applied.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.backlog import (  # noqa: E402
    DONE,
    RssSampler,
    done_count,
    engine_for,
    events,
    inbox_counts,
    preload,
    service_env,
    start,
    stop,
)
from tests.support import create_pg_database, drop_pg_database, pg_url_for  # noqa: E402
from tests.webhook_client import TEST_SECRET  # noqa: E402


def _cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def bench_backend(
    backend: str, count: int, mix: str, timeout: float, work: Path
) -> dict[str, object]:
    pg_name = None
    if backend == "sqlite":
        url = f"sqlite:///{work / 'apply.sqlite3'}"
    else:
        pg_name = create_pg_database()
        url = pg_url_for(pg_name)
    env = service_env(url, work / f"data-{backend}", TEST_SECRET)
    try:
        loaded = preload(env, events(count, mix), count, work / f"preload-{backend}.log")
        print(f"[{backend}] backlog of {count:,} posted in {loaded:.1f} s", file=sys.stderr)
        engine = engine_for(url)
        worker = start(["worker"], env, work / f"worker-{backend}.log")
        began = time.monotonic()
        first: float | None = None
        done = 0
        counts = inbox_counts(engine)
        try:
            ps = psutil.Process(worker.pid)
            rss = RssSampler({"worker": worker.pid})
            cpu = 0.0
            while time.monotonic() - began < timeout:
                if worker.poll() is not None:
                    raise SystemExit(f"ehi-bridge worker exited with {worker.returncode}")
                rss.sample()
                cpu = max(cpu, _cpu_seconds(ps))
                counts = inbox_counts(engine)
                done = done_count(counts)
                if done and first is None:
                    first = time.monotonic()
                if done >= count:
                    break
                time.sleep(0.25)
            ended = time.monotonic()
            cpu = max(cpu, _cpu_seconds(ps))
        finally:
            stop(worker)
            engine.dispose()
        wall = ended - began
        draining = ended - first if first is not None else 0.0
        return {
            "backend": backend,
            "mix": mix,
            "events": count,
            "done": done,
            "drained": done >= count,
            "seconds": round(wall, 2),
            "seconds_from_first": round(draining, 2),
            "events_per_s": round(done / wall, 1) if wall else 0.0,
            "events_per_s_from_first": round(done / draining, 1) if draining else 0.0,
            "worker_cpu_s": round(cpu, 1),
            "worker_peak_rss_mb": round(rss.peak_total.get("worker", 0) / 2**20),
            "statuses": dict(sorted(counts.items())),
        }
    finally:
        if pg_name:
            drop_pg_database(pg_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--mix", choices=["test", "onboarding"], default="test")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the drain (s)")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ehi-bench-apply-") as tmp:
        for backend in backends:
            rows.append(bench_backend(backend, args.events, args.mix, args.timeout, Path(tmp)))
    print(f"drained = every inbox row {'/'.join(DONE)}; load average {psutil.getloadavg()[0]:.1f}")
    print(
        f"{'backend':<10}{'mix':<12}{'events':>9}{'applied':>9}{'s':>8}{'events/s':>10}"
        f"{'s (1st on)':>11}{'events/s':>10}{'CPU s':>7}{'RSS MB':>8}"
    )
    for r in rows:
        mark = "" if r["drained"] else "  (timed out)"
        print(
            f"{r['backend']:<10}{r['mix']:<12}{r['events']:>9,}{r['done']:>9,}{r['seconds']:>8}"
            f"{r['events_per_s']:>10,.0f}{r['seconds_from_first']:>11}"
            f"{r['events_per_s_from_first']:>10,.0f}{r['worker_cpu_s']:>7}"
            f"{r['worker_peak_rss_mb']:>8}{mark}"
        )
    print(orjson.dumps(rows).decode())


if __name__ == "__main__":
    main()
