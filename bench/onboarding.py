"""Onboarding: N patients connect at once; seconds until every one's records are queryable.

Runs the two processes a user runs, over loopback HTTP: the Fasten simulator
(``ehi-bridge simulator serve``, export delay ``--export-delay``, default 2 s; webhook
retries on its default schedule) and ``ehi-bridge serve`` (background on, as the README
starts it) on a fresh SQLite file or throwaway PostgreSQL database, pointed at the
simulator. Then one control-API call (``POST /_sim/connections`` with ``count`` N, what
``ehi-bridge simulator scenario connect --count N`` sends) connects N patients at once:
the simulator sends N ``patient.connection_success`` webhooks, and everything after that is
the service's own work (request each export from the simulator's API, receive the success
webhooks, download through the signed storage redirect, ingest).

Patients are the simulator's Synthea sample, assigned in turn (13 patients, 74 to 3,517
resources, 555 on average), so N patients hold about 555 N resources; the expected count
of each connection is its patient's ``resource_count`` (``GET /_sim/patients``).

Observed from the outside every 0.5 s: the simulator's exports (``GET /_sim/exports``) and
the service's REST API (``GET /api/exports``, a token made with ``ehi-bridge auth token
create``). Printed, in seconds from the start of the connect call:

- connect: the control call itself returned (the simulator created the N connections);
- webhooks: the simulator's N ``connection_success`` deliveries were all answered 2xx
  (``GET /_sim/deliveries``, every 2 s until then): the simulator's own share;

- requested: every connection has an export at the simulator (the service asked for it);
- downloaded: every export is past ``downloading`` in the API (``ingesting``, ``complete``
  or ``partial``);
- queryable: every export is ``complete`` with ``ingested_total`` equal to its patient's
  resource count (ingest commits the rows before it marks the export complete); then a
  ``count(*)`` of resources per connection in the database is checked against the same
  numbers (outside the timing);

and resources/s (all resources / queryable seconds), and the peak RSS (psutil, sampled
every 0.2 s) of every process: the service, its children (the ingest's parser process),
the simulator. Targets (issue 9, SQLite): 100 patients ≤ 30 s, 1,000 ≤ 3 min, service
RSS ≤ 300 MB.

    python bench/onboarding.py [--patients 100] [--backend sqlite|postgres|both]
    python bench/onboarding.py --patients 1000 --timeout 900
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.backlog import RssSampler, engine_for, start, stop  # noqa: E402
from sqlalchemy import text  # noqa: E402
from tests.support import (  # noqa: E402
    create_pg_database,
    drop_pg_database,
    free_port,
    pg_url_for,
    wait_http,
)
from tests.webhook_client import TEST_SECRET  # noqa: E402

DOWNLOADED = ("ingesting", "complete", "partial")


def _api_exports(api: httpx.Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):  # bounded: 500 a page
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/api/exports", params=params)
        page.raise_for_status()
        body = page.json()
        out += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            break
    return out


def _sampler(rss: RssSampler, done: threading.Event) -> None:
    while not done.wait(0.2):
        rss.sample()


def bench_once(
    backend: str, patients: int, export_delay: float, timeout: float, work: Path
) -> dict[str, Any]:
    run_dir = work / f"{backend}-{patients}"
    run_dir.mkdir()
    pg_name = None
    if backend == "sqlite":
        url = f"sqlite:///{run_dir / 'ehi-bridge.sqlite3'}"
    else:
        pg_name = create_pg_database()
        url = pg_url_for(pg_name)
    port, sim_port, storage_port = free_port(), free_port(), free_port()
    base, sim = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sim_port}"
    keys = {
        "EHI_TEST_PUBLIC_ID": "public_test_bench",
        "EHI_TEST_PRIVATE_KEY": "private_test_bench",
        "EHI_TEST_WEBHOOK_SECRETS": TEST_SECRET,
        "EHI_LOG_LEVEL": "WARNING",
        "EHI_DATA_DIR": str(run_dir / "data"),
    }
    sim_env = {**os.environ, **keys}
    env = {
        **sim_env,
        "EHI_DATABASE_URL": url,
        "EHI_FASTEN_API_URL": f"{sim}/v1",
        "EHI_DOWNLOAD_ALLOWED_HOSTS": f"localhost:{storage_port}",  # the simulator's storage
    }
    procs = []
    result: dict[str, Any] = {"backend": backend, "patients": patients}
    try:
        simulator = start(
            [
                "simulator",
                "serve",
                "--port",
                str(sim_port),
                "--storage-port",
                str(storage_port),
                "--webhook-url-test",
                f"{base}/webhooks/fasten/test",
                "--export-delay",
                str(export_delay),
            ],
            sim_env,
            run_dir / "simulator.log",
        )
        procs.append(simulator)
        wait_http(f"{sim}/_sim/state", timeout=60, proc=simulator)
        service = start(["serve", "--port", str(port)], env, run_dir / "service.log")
        procs.append(service)
        wait_http(f"{base}/healthz", timeout=60, proc=service)
        token = subprocess.run(
            [sys.executable, "-m", "ehi_bridge", "auth", "token", "create", "bench"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()[-1]
        rss = RssSampler({"service": service.pid, "simulator": simulator.pid})
        sampling = threading.Event()
        sampler = threading.Thread(target=_sampler, args=(rss, sampling), daemon=True)
        sampler.start()
        with (
            httpx.Client(base_url=sim, timeout=60) as control,
            httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as api,
        ):
            counts = {p["index"]: p["resource_count"] for p in control.get("/_sim/patients").json()}
            began = time.monotonic()
            created = control.post("/_sim/connections", json={"count": patients}, timeout=timeout)
            created.raise_for_status()
            result["connect_call_s"] = round(time.monotonic() - began, 2)
            expected = {c["org_connection_id"]: counts[c["patient_index"]] for c in created.json()}
            total = sum(expected.values())
            result["resources"] = total
            reached: dict[str, float | None] = dict.fromkeys(
                ("webhooks", "requested", "downloaded", "queryable")
            )
            delivered = 0
            last_deliveries = 0.0
            progress: dict[str, int] = {}
            last_print = 0.0
            while time.monotonic() - began < timeout:
                for proc in procs:
                    if proc.poll() is not None:
                        raise SystemExit(f"a process exited with {proc.returncode}")
                if reached["webhooks"] is None and time.monotonic() - last_deliveries >= 2:
                    # The simulator's own share: its connection_success webhooks answered.
                    last_deliveries = time.monotonic()
                    deliveries = control.get(
                        "/_sim/deliveries", params={"event_type": "patient.connection_success"}
                    ).json()
                    delivered = sum(d["state"] == "delivered" for d in deliveries)
                sim_exports = control.get("/_sim/exports").json()
                org_of_task = {e["task_id"]: e["org_connection_id"] for e in sim_exports}
                exports = _api_exports(api)
                requested = len({e["org_connection_id"] for e in sim_exports} & set(expected))
                downloaded = sum(e["status"] in DOWNLOADED for e in exports)
                queryable = [
                    e
                    for e in exports
                    if e["status"] == "complete"
                    and e["task_id"] in org_of_task
                    and e["ingested_total"] == expected.get(org_of_task[e["task_id"]])
                ]
                progress = {
                    "webhooks": delivered,
                    "requested": requested,
                    "downloaded": downloaded,
                    "queryable": len(queryable),
                    "resources": sum(e["ingested_total"] for e in queryable),
                }
                now = time.monotonic() - began
                for key in reached:
                    if reached[key] is None and progress[key] >= patients:
                        reached[key] = round(now, 2)
                if now - last_print >= 5:
                    last_print = now
                    statuses: dict[str, int] = {}
                    for e in exports:
                        statuses[e["status"]] = statuses.get(e["status"], 0) + 1
                    print(
                        f"[{backend} {patients}] {now:5.0f} s {progress} {statuses}",
                        file=sys.stderr,
                    )
                if reached["queryable"] is not None:
                    break
                time.sleep(0.5)
            sampling.set()
            sampler.join()
        result.update({f"{key}_s": value for key, value in reached.items()})
        result["progress"] = progress
        seconds = reached["queryable"]
        result["resources_per_s"] = round(total / seconds) if seconds else None
        result["peak_rss_mb"] = {k: round(v / 2**20) for k, v in sorted(rss.peak.items())}
        engine = engine_for(url)
        try:
            with engine.connect() as conn:
                stored = dict(
                    conn.execute(
                        text(
                            "SELECT c.org_connection_id, count(*) FROM resources r "
                            "JOIN connections c ON c.id = r.connection_id "
                            "GROUP BY c.org_connection_id"
                        )
                    ).all()
                )
        finally:
            engine.dispose()
        result["verified"] = sum(stored.get(cid) == n for cid, n in expected.items())
        return result
    finally:
        for proc in reversed(procs):
            stop(proc)
        if pg_name:
            drop_pg_database(pg_name)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default="100", help="comma-separated, e.g. 100,1000")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--export-delay", type=float, default=2.0, help="simulated seconds")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on each run (s)")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ehi-bench-onboarding-") as tmp:
        for backend in backends:
            for patients in [int(n) for n in args.patients.split(",")]:
                rows.append(
                    bench_once(backend, patients, args.export_delay, args.timeout, Path(tmp))
                )
    print(f"export delay {args.export_delay} s; load average {psutil.getloadavg()[0]:.1f}")
    print(
        f"{'backend':<10}{'patients':>9}{'resources':>10}{'connect s':>10}{'webhooks s':>11}"
        f"{'requested s':>12}{'downloaded s':>13}"
        f"{'queryable s':>12}{'resources/s':>12}{'verified':>9}"
    )
    for r in rows:
        rate = r["resources_per_s"]
        print(
            f"{r['backend']:<10}{r['patients']:>9,}{r['resources']:>10,}"
            f"{_fmt(r['connect_call_s']):>10}{_fmt(r['webhooks_s']):>11}"
            f"{_fmt(r['requested_s']):>12}{_fmt(r['downloaded_s']):>13}"
            f"{_fmt(r['queryable_s']):>12}{'—' if rate is None else f'{rate:,}':>12}"
            f"{r['verified']:>9,}"
        )
        if r["queryable_s"] is None:
            print(f"  timed out at {args.timeout:.0f} s: {r['progress']}")
        peaks = ", ".join(f"{k} {v}" for k, v in r["peak_rss_mb"].items())
        print(f"  peak RSS MB: {peaks}")
    print(orjson.dumps(rows).decode())


if __name__ == "__main__":
    main()
