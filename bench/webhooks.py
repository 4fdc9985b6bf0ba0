"""Durable webhook deliveries per second and answer latency, with wrk over loopback.

Starts ``ehi-bridge serve --no-background`` (the receive path alone; background work would
run in a separate ``worker`` process in such a deployment) on SQLite (WAL, synchronous=FULL)
or PostgreSQL (synchronous_commit=on), pre-signs distinct deliveries, replays them with wrk
at 8 and 32 connections, and prints requests/s and p50/p99 latency. Every 200 is answered
only after its group commit returned.

    python bench/webhooks.py [--backend sqlite|postgres|both] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="web processes (serve --workers)")
    parser.add_argument("--connections", default="8,32", help="comma-separated wrk connections")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
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
