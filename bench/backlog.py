"""Helpers shared by the background-work benchmarks (not a benchmark itself).

- :func:`events` builds the envelopes of a backlog (``test``: ``webhook.test`` only;
  ``onboarding``: per connection a ``patient.connection_success`` and an export event).
- :func:`post_signed` delivers them over real HTTP to a running ``ehi-bridge serve``:
  a small asyncio HTTP/1.1 keep-alive client (uvloop), each delivery signed just before it
  is sent, so every one is verified and stored by the receiver exactly as Fasten's would be.
  It is faster than httpx and, unlike wrk, sends each delivery exactly once.
- :func:`preload` starts ``ehi-bridge serve --no-background``, posts a backlog and stops it:
  the rows are left ``received`` for the background processing started next.
- :func:`inbox_counts` reads the inbox's statuses from the database.

Drained means every inbox row has left ``received``/``queued``: :data:`DONE` lists the
statuses that count (``applied``, ``ignored``, ``parked``); anything else (including a status
a later design may add, such as a retry state) counts as still waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import uvloop
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import free_port, wait_http  # noqa: E402
from tests.webhook_client import connection_success, envelope, signed  # noqa: E402

from ehi_bridge.db.engine import normalize_url  # noqa: E402

DONE = ("applied", "ignored", "parked")
WEBHOOK_PATH = "/webhooks/fasten/test"
# Export successes link to a host that is not on the download allow-list: the follow-up
# (download) each one starts is refused at once, without any network traffic.
REFUSED_URL = "http://refused.invalid/export-1.jsonl"


def events(count: int, mix: str, run: str | None = None) -> Iterator[dict[str, Any]]:
    """``count`` envelopes. ``onboarding``: blocks of 250 connections, first their
    connection_success, then their export event (9 in 10 success, 1 in 10 failure), so a
    batch of a few hundred often holds both events of one connection."""
    run = run or uuid.uuid4().hex[:8]
    if mix == "test":
        for i in range(count):
            yield envelope("webhook.test", {"hello": "world", "n": i})
        return
    if mix != "onboarding":
        raise ValueError(f"unknown mix {mix!r}")
    sent = 0
    block = 250
    for start in itertools.count(0, block):
        ids = [f"bench-{run}-{start + i}" for i in range(block)]
        for org_id in ids:
            if sent == count:
                return
            yield envelope(
                "patient.connection_success",
                connection_success(org_id, external_id=f"user-{org_id}"),
            )
            sent += 1
        for n, org_id in enumerate(ids):
            if sent == count:
                return
            task = f"task-{org_id}"
            if n % 10 == 9:
                data: dict[str, Any] = {
                    "org_connection_id": org_id,
                    "task_id": task,
                    "failure_reason": "resource_patient_failure",
                }
                yield envelope("patient.ehi_export_failed", data)
            else:
                data = {
                    "org_connection_id": org_id,
                    "task_id": task,
                    "org_id": "org-epic",
                    "download_links": [{"url": REFUSED_URL, "export_type": "jsonl"}],
                    "stats": {"total_resources": 700, "total_by_resource_type": {"Patient": 1}},
                }
                yield envelope("patient.ehi_export_success", data)
            sent += 1
    return


def _request(port: int, event: dict[str, Any]) -> bytes:
    body, headers = signed(event)
    head = [f"POST {WEBHOOK_PATH} HTTP/1.1", f"host: 127.0.0.1:{port}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _post_all(port: int, items: Iterator[dict[str, Any]], concurrency: int) -> Counter[int]:
    statuses: Counter[int] = Counter()

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for event in items:  # shared iterator: each event is taken by one connection
                writer.write(_request(port, event))
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                statuses[status] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    return statuses


def post_signed(port: int, items: Iterable[dict[str, Any]], concurrency: int = 32) -> Counter[int]:
    """Deliver every event once; the answers' status codes, counted."""
    return uvloop.run(_post_all(port, iter(items), concurrency))


def engine_for(url: str) -> Engine:
    return create_engine(normalize_url(url), pool_pre_ping=True)


def inbox_counts(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM inbox_events GROUP BY status"))
        return Counter({str(status): int(count) for status, count in rows})


def done_count(counts: Mapping[str, int]) -> int:
    return sum(counts.get(status, 0) for status in DONE)


def service_env(url: str, data_dir: Path, secret: str) -> dict[str, str]:
    return {
        **os.environ,
        "EHI_DATABASE_URL": url,
        "EHI_DATA_DIR": str(data_dir),
        "EHI_TEST_WEBHOOK_SECRETS": secret,
        "EHI_LOG_LEVEL": "WARNING",
        # Applying, not exports: a connection_success does not ask Fasten for an export.
        "EHI_AUTO_REQUEST_EXPORT": "false",
        # Nothing may leave the machine: any Fasten API call goes to a closed loopback port.
        "EHI_FASTEN_API_URL": "http://127.0.0.1:9/v1",
    }


def start(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ehi_bridge", *args],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def preload(
    env: Mapping[str, str],
    items: Iterable[dict[str, Any]],
    expected: int,
    log: Path,
    concurrency: int = 32,
) -> float:
    """Post ``items`` through ``serve --no-background``; seconds taken. Fails unless every
    answer was 200 and the inbox holds ``expected`` rows, all ``received``."""
    port = free_port()
    server = start(["serve", "--no-background", "--port", str(port)], env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=server)
        began = time.monotonic()
        statuses = post_signed(port, items, concurrency)
        seconds = time.monotonic() - began
    finally:
        stop(server)
    if set(statuses) != {200}:
        raise SystemExit(f"the receiver answered {dict(statuses)} while preloading")
    engine = engine_for(env["EHI_DATABASE_URL"])
    try:
        counts = inbox_counts(engine)
    finally:
        engine.dispose()
    if sum(counts.values()) != expected or done_count(counts):
        raise SystemExit(f"preloaded inbox holds {dict(counts)}, expected {expected} waiting")
    return seconds


class RssSampler:
    """Peak resident memory of process trees, sampled (psutil) by the caller's loop."""

    def __init__(self, roots: Mapping[str, int]) -> None:
        self.roots = {role: psutil.Process(pid) for role, pid in roots.items()}
        self.peak: dict[str, int] = {}  # "role" or "role/child-name" -> bytes
        self.peak_total: dict[str, int] = {}  # role -> peak of the tree's sum

    def sample(self) -> None:
        for role, root in self.roots.items():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    key = role if proc.pid == root.pid else f"{role}/{_short_name(proc)}"
                except psutil.Error:
                    continue
                total += rss
                self.peak[key] = max(self.peak.get(key, 0), rss)
            self.peak_total[role] = max(self.peak_total.get(role, 0), total)


def _short_name(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return proc.name()
    for i, part in enumerate(cmd):
        if part == "-m" and i + 1 < len(cmd):
            return cmd[i + 1].rsplit(".", 1)[-1]
    return proc.name()
