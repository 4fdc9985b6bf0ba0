"""Helpers shared by the test suite: databases, free ports, subprocess servers."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

PG_ADMIN_URL = os.environ.get("EHI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO_ROOT = Path(__file__).resolve().parents[1]


def skip_or_fail(reason: str) -> None:
    """Outside CI a missing service skips; under CI=true it fails (nothing silently skipped)."""
    if IN_CI:
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def pg_url_for(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def create_pg_database(template: str | None = None) -> str:
    import psycopg

    name = f"ehi_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        suffix = f" TEMPLATE {template}" if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{suffix}')
    return name


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_LOWEST_PORT = 10_000
_handed_out: set[int] = set()


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _worker_port_range() -> tuple[int, int]:
    """This test process's own slice of the ports below the ephemeral range.

    Under pytest-xdist each worker draws from a disjoint slice, so two workers never hand out
    the same port between one's probe and its server's bind.
    """
    start = _ephemeral_ports_start()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    span = max(0, start - _LOWEST_PORT) // max(1, workers)
    low = _LOWEST_PORT + worker * span
    return low, low + span


def free_port() -> int:
    """A loopback port free now, for a server the caller starts next.

    Chosen below the kernel's ephemeral range: a port taken from that range (binding port 0)
    is free again once the probe closes, and the kernel may hand it to the next server that
    binds port 0 (the simulator does) before the caller's server binds it. That happened:
    the service failed to bind while its health URL was answered by the simulator.
    """
    low, high = _worker_port_range()
    for _ in range(1000):
        port = random.randrange(low, high) if high > low else 0
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(url)


def ehi_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ehi_bridge", *args]


@contextmanager
def running(
    args: list[str],
    env: Mapping[str, str],
    ready_url: str,
    log_path: Path,
    timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; its output goes to ``log_path``."""
    full_env = {**os.environ, **env}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(args, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(ready_url, timeout=timeout, proc=proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def threads_of(pid: int) -> list[tuple[int, str, int]]:
    """(thread id, OS name, nice value) of each of the process's threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:  # a thread may end between the listing and the reads
            name = (task / "comm").read_text().strip()
            nice = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
        except FileNotFoundError:
            continue
        found.append((int(task.name), name, nice))
    return found
