"""SMART source syncs against the simulator's SMART sandbox, one profile at a time.

For each profile (generic, epic, cerner, athena) the sandbox's largest patient is
authorized through the consent page and synced end to end (pull over loopback HTTP into the
spool, then the records ingest) on a fresh SQLite database. Each profile runs in a fresh
child process; its peak RSS is ``VmHWM`` reset just before the sync starts (so schema
creation and the consent page do not count), beside the RSS at that moment; the sandbox
runs as its own process (``ehi-bridge simulator smart``). Reported: resources, seconds
(pull, ingest, total), requests, the most requests in flight to the host (ours, and as the
sandbox saw it), RSS before and peak RSS during the sync, and the parser's peak.

    .venv/bin/python bench/sources.py                  # all four profiles
    .venv/bin/python bench/sources.py --profiles epic
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REDIRECT = "http://127.0.0.1:9/sources/callback"


def _vm(field: str) -> float:
    """A /proc/self/status figure in MB (VmRSS now, VmHWM the peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(sandbox_url: str, profile: str) -> dict[str, object]:
    from tests.smart_flow import consent

    from ehi_bridge.config import Settings
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import upgrade
    from ehi_bridge.exports.models import Export
    from ehi_bridge.records.parser_process import keep_parser_ready, stop_ready_parser
    from ehi_bridge.sources import service
    from ehi_bridge.sources.fetch import HostLimiter

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.sqlite3"
        upgrade(url)
        settings = Settings(
            data_dir=Path(tmp),
            database_url=url,
            smart_sandbox_url=sandbox_url,
            source_redirect_url=REDIRECT,
            log_level="WARNING",
        )
        db = Database(url)
        patients = httpx.get(f"{sandbox_url}/_smart/patients").json()
        largest = max(patients, key=lambda p: p["resource_count"])
        start = service.begin_authorization(db, settings, platform_id=f"sandbox-{profile}")
        answer = consent(start.url, largest["id"])
        connection_id = service.complete_authorization(
            db, settings, answer["state"], answer["code"], sync=False
        )
        export_id = service.start_sync_here(db, connection_id)
        keep_parser_ready()
        rss_before = _vm("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the sync's own peak
        httpx.post(f"{sandbox_url}/_smart/stats/reset")
        limiter = HostLimiter(settings.source_max_in_flight_per_host)
        started = time.perf_counter()
        pulled = asyncio.run(service.pull_export(db, settings, limiter, export_id))
        pulled_at = time.perf_counter()
        outcome = service.ingest_export(db, settings, export_id)
        done = time.perf_counter()
        stop_ready_parser()
        stats = httpx.get(f"{sandbox_url}/_smart/stats").json()
        with db.read_session() as session:
            export = session.get(Export, export_id)
            assert export is not None
            report = export.report or {}
        db.dispose()
        return {
            "profile": profile,
            "outcome": outcome if pulled["outcome"] == "ok" else pulled,
            "resources": export.ingested_total,
            "sandbox_holds": largest["resource_count"],
            "pull_s": round(pulled_at - started, 2),
            "ingest_s": round(done - pulled_at, 2),
            "total_s": round(done - started, 2),
            "requests": report.get("sync", {}).get("requests"),
            "max_in_flight": max(limiter.peak.values(), default=0),
            "sandbox_max_in_flight": stats.get("max_in_flight"),
            "rss_before_sync_mb": round(rss_before, 1),
            "peak_rss_mb": round(_vm("VmHWM"), 1),
            "parser_peak_rss_mb": round(report.get("parser_peak_rss_kib", 0) / 1024, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profiles", default="generic,epic,cerner,athena")
    parser.add_argument("--child", nargs=2, metavar=("SANDBOX_URL", "PROFILE"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    from tests.support import free_port

    port = free_port()
    sandbox_url = f"http://127.0.0.1:{port}"
    exe = [sys.executable, "-m", "ehi_bridge"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EHI_LOG_LEVEL": "WARNING"}
    sandbox = subprocess.Popen([*exe, "simulator", "smart", "--port", str(port)], env=env)
    try:
        for _ in range(200):
            try:
                httpx.get(f"{sandbox_url}/_smart/stats", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        rows = []
        for profile in args.profiles.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--child", sandbox_url, profile],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        sandbox.terminate()
        sandbox.wait()


if __name__ == "__main__":
    main()
