"""Durable webhook deliveries per second and answer latency, with wrk over loopback.

Starts ``ehi-bridge serve --no-background`` (the receive path alone; background work would
run in a separate ``worker`` process in such a deployment) on SQLite (WAL, synchronous=FULL)
or PostgreSQL (synchronous_commit=on), pre-signs distinct deliveries, replays them with wrk
at 8 and 32 connections, and prints requests/s and p50/p99 latency. Every 200 is answered
only after its group commit returned.

``--background``: the receiver as users run it, while background work drains a backlog.
For each backend and connection count it runs twice on a fresh database each, with the same
backlog of ``--backlog`` signed deliveries (default 50,000 ``patient.connection_success``
of distinct connections, posted through ``serve --no-background`` by ``bench/backlog.py``):
once ``serve --no-background`` (the backlog waits), once ``serve`` (background on, as the
README starts it; the backlog drains during the wrk run, which starts a second after the
child applied its first row). It prints both rows, the ratio of
their throughputs and the drain rate: inbox rows that became ``applied``/``ignored``/
``parked`` during the wrk window, read from the database right before and after it.
``EHI_AUTO_REQUEST_EXPORT=false`` (applying, not exports). Targets (issue 9, c=32): >= 80 %
of the ``--no-background`` throughput, p99 <= 15 ms, drain >= 2,000 events/s.

    python bench/webhooks.py [--backend sqlite|postgres|both] [--seconds 10]
    python bench/webhooks.py --background [--backend sqlite] [--connections 32] [--seconds 8]
        [--repeat 3]   # pairs of runs, alternating, with the median of each figure
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.backlog import (  # noqa: E402
    done_count,
    engine_for,
    inbox_counts,
    preload,
    service_env,
)
from tests.support import (  # noqa: E402
    create_pg_database,
    drop_pg_database,
    free_port,
    pg_url_for,
    wait_http,
)
from tests.webhook_client import TEST_SECRET, connection_success, envelope, signed  # noqa: E402

LUA = r"""
local requests = {}
local count = 0
local counter = 0
function init(args)
  local path = args[1]
  local thread_index = tonumber(args[2])
  local threads = tonumber(args[3])
  local i = 0
  for line in io.lines(path) do
    if i % threads == thread_index then
      local id, ts, sig, body = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(.*)$")
      count = count + 1
      requests[count] = wrk.format("POST", "/webhooks/fasten/test", {
        ["webhook-id"] = id, ["webhook-timestamp"] = ts, ["webhook-signature"] = sig,
        ["content-type"] = "application/json"}, body)
    end
    i = i + 1
  end
end
function request()
  counter = counter + 1
  if counter > count then counter = 1 end
  return requests[counter]
end
"""


def write_requests(path: Path, count: int) -> None:
    with path.open("w") as out:
        for i in range(count):
            event = envelope(
                "patient.connection_success", connection_success(f"bench-{uuid.uuid4().hex}-{i}")
            )
            body, headers = signed(event)
            out.write(
                f"{headers['webhook-id']}\t{headers['webhook-timestamp']}\t"
                f"{headers['webhook-signature']}\t{body.decode()}\n"
            )


def run_wrk(
    base: str, connections: int, seconds: int, requests: Path, work: Path
) -> dict[str, float]:
    # One wrk thread per request partition; wrk's Lua runs per thread, so partition by index.
    threads = 2
    results = []
    script = work / "deliver.lua"
    script.write_text(LUA)
    procs = []
    for index in range(threads):
        procs.append(
            subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    f"-c{connections // threads}",
                    f"-d{seconds}s",
                    "--latency",
                    "-s",
                    str(script),
                    base,
                    "--",
                    str(requests),
                    str(index),
                    str(threads),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        out, _ = proc.communicate()
        # No Lua response() callback: it costs wrk a Lua call per answer on the same two
        # cores as the server. wrk counts non-2xx answers itself.
        failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        if failed or proc.returncode:
            raise SystemExit(f"non-2xx answers or wrk failure during the run: {out[-300:]}")
        results.append(out)
    rps = sum(float(re.search(r"Requests/sec:\s+([\d.]+)", r).group(1)) for r in results)  # type: ignore[union-attr]

    def pct(text: str, p: str) -> float:
        match = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", text)
        assert match, text
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {
        "rps": rps,
        "p50_ms": max(pct(r, "50") for r in results),
        "p99_ms": max(pct(r, "99") for r in results),
    }


def bench_backend(
    backend: str, seconds: int, work: Path, workers: int, connection_counts: list[int]
) -> list[tuple[str, int, dict[str, float]]]:
    rows = []
    for connections in connection_counts:
        pg_name = None
        if backend == "sqlite":
            url = f"sqlite:///{work / f'bench-{connections}.sqlite3'}"
        else:
            pg_name = create_pg_database()
            url = pg_url_for(pg_name)
        port = free_port()
        env = {
            **os.environ,
            "EHI_DATABASE_URL": url,
            "EHI_DATA_DIR": str(work / "data"),
            "EHI_TEST_WEBHOOK_SECRETS": TEST_SECRET,
            "EHI_LOG_LEVEL": "WARNING",
        }
        # Enough distinct deliveries that none repeats during the run (all are inserts).
        requests = work / f"requests-{connections}.tsv"
        write_requests(requests, 16_000 * seconds)
        # Flush the request file now, not as writeback competing with the fsyncs measured.
        os.sync()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ehi_bridge",
                "serve",
                "--no-background",
                "--workers",
                str(workers),
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=server)
            result = run_wrk(f"http://127.0.0.1:{port}", connections, seconds, requests, work)
            rows.append((backend, connections, result))
        finally:
            server.terminate()
            server.wait(timeout=30)
            if pg_name:
                drop_pg_database(pg_name)
    return rows


def _backlog(count: int) -> Iterator[dict[str, Any]]:
    run = uuid.uuid4().hex[:8]
    for i in range(count):
        yield envelope("patient.connection_success", connection_success(f"backlog-{run}-{i}"))


def wait_draining(engine: Any, timeout: float) -> None:
    start = done_count(inbox_counts(engine))
    deadline = time.monotonic() + timeout
    while done_count(inbox_counts(engine)) == start:
        if time.monotonic() > deadline:
            raise RuntimeError("the background child applied nothing")
        time.sleep(0.1)
    time.sleep(1.0)  # past its start-up: DBOS, the parser process


def bench_background(
    backend: str, seconds: int, work: Path, connections: int, backlog: int
) -> list[dict[str, Any]]:
    """The same load twice, each on a fresh database holding the same backlog: receiver
    alone, then receiver with background processing on (the backlog drains meanwhile)."""
    requests = work / f"requests-bg-{connections}.tsv"
    write_requests(requests, 16_000 * seconds)
    rows = []
    for background in (False, True):
        label = "background" if background else "no-background"
        pg_name = None
        db_file = work / f"bg-{label}-{connections}-{uuid.uuid4().hex[:8]}.sqlite3"
        if backend == "sqlite":
            url = f"sqlite:///{db_file}"
        else:
            pg_name = create_pg_database()
            url = pg_url_for(pg_name)
        env = service_env(url, work / f"data-{label}", TEST_SECRET)
        try:
            loaded = preload(env, _backlog(backlog), backlog, work / f"preload-{label}.log")
            print(f"[{backend} {label}] backlog of {backlog:,} in {loaded:.1f} s", file=sys.stderr)
            os.sync()
            port = free_port()
            args = ["serve", "--port", str(port)]
            if not background:
                args.insert(1, "--no-background")
            engine = engine_for(url)
            with (work / f"serve-{label}.log").open("ab") as log:
                server = subprocess.Popen(
                    [sys.executable, "-m", "ehi_bridge", *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=server)
                if background and backlog:
                    # The child boots after the web process answers: measure once it drains.
                    wait_draining(engine, timeout=60)
                before, t0 = done_count(inbox_counts(engine)), time.monotonic()
                result = run_wrk(f"http://127.0.0.1:{port}", connections, seconds, requests, work)
                after, t1 = done_count(inbox_counts(engine)), time.monotonic()
                waiting = sum(inbox_counts(engine).values()) - after
            finally:
                server.terminate()
                server.wait(timeout=30)
                engine.dispose()
            rows.append(
                {
                    "backend": backend,
                    "mode": label,
                    "connections": connections,
                    **result,
                    "drain_per_s": (after - before) / (t1 - t0),
                    "applied_in_window": after - before,
                    "waiting_after": waiting,
                }
            )
        finally:
            if pg_name:
                drop_pg_database(pg_name)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db_file}{suffix}").unlink(missing_ok=True)
    return rows


def main_background(args: argparse.Namespace) -> None:
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ehi-bench-") as tmp:
        for backend in backends:
            for connections in [int(c) for c in args.connections.split(",")]:
                for _ in range(args.repeat):
                    rows += bench_background(
                        backend, args.seconds, Path(tmp), connections, args.backlog
                    )
    print(
        f"backlog {args.backlog:,} events; wrk {args.seconds} s; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'backend':<10}{'mode':<15}{'conns':>6}{'deliveries/s':>14}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'drain/s':>9}{'waiting':>9}"
    )
    for r in rows:
        print(
            f"{r['backend']:<10}{r['mode']:<15}{r['connections']:>6}{r['rps']:>14,.0f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['drain_per_s']:>9,.0f}"
            f"{r['waiting_after']:>9,}"
        )
    pairs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for alone, with_bg in zip(rows[::2], rows[1::2], strict=True):
        ratio = with_bg["rps"] / alone["rps"]
        key = (with_bg["backend"], with_bg["connections"])
        pairs.setdefault(key, []).append((ratio, with_bg["p99_ms"], with_bg["drain_per_s"]))
        print(
            f"{with_bg['backend']} c={with_bg['connections']}: background on / off throughput "
            f"{ratio:.0%}, p99 {with_bg['p99_ms']:.1f} ms, "
            f"drain {with_bg['drain_per_s']:,.0f} events/s"
        )
        if with_bg["waiting_after"] == 0:
            print(
                "  the backlog ran out during the run: the drain rate is a lower bound; "
                "raise --backlog"
            )
    for (backend, connections), runs in pairs.items():
        if len(runs) > 1:
            ratios, p99s, drains = zip(*runs, strict=True)
            print(
                f"{backend} c={connections}, median of {len(runs)} pairs: throughput "
                f"{statistics.median(ratios):.0%}, p99 {statistics.median(p99s):.1f} ms, "
                f"drain {statistics.median(drains):,.0f} events/s"
            )
    print(orjson.dumps(rows).decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="web processes (serve --workers)")
    parser.add_argument("--connections", default=None, help="comma-separated wrk connections")
    parser.add_argument(
        "--background",
        action="store_true",
        help="receiver with background on while a backlog drains, against --no-background",
    )
    parser.add_argument("--backlog", type=int, default=50_000, help="events (--background)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="pairs of runs per cell, and their medians"
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    if args.connections is None:
        args.connections = "32" if args.background else "8,32"
    if args.background:
        main_background(args)
        return
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ehi-bench-") as tmp:
        for backend in backends:
            rows += bench_backend(
                backend,
                args.seconds,
                Path(tmp),
                args.workers,
                [int(c) for c in args.connections.split(",")],
            )
    print(f"web processes: {args.workers}")
    print(f"{'backend':<10}{'conns':>6}{'deliveries/s':>14}{'p50 ms':>9}{'p99 ms':>9}")
    for backend, connections, result in rows:
        print(
            f"{backend:<10}{connections:>6}{result['rps']:>14,.0f}"
            f"{result['p50_ms']:>9.2f}{result['p99_ms']:>9.2f}"
        )
    print(orjson.dumps([{"backend": b, "connections": c, **r} for b, c, r in rows]).decode())


if __name__ == "__main__":
    started = time.time()
    main()
