"""A process that cannot serve touches nothing; two processes never share an executor id."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import psutil

from ehi_bridge.runtime import APPLIER_THREAD_NAME
from tests.e2e.conftest import ServerFactory
from tests.support import ehi_command, free_port, running, threads_of

STARTUP_TIMEOUT = 90


def test_serve_on_a_taken_port_exits_before_migrating_or_recovering(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    database = tmp_path / "fresh" / "ehi.sqlite3"
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            ehi_command("serve", "--port", str(port)),
            env={**os.environ, **base_env, "EHI_DATABASE_URL": f"sqlite:///{database}"},
            capture_output=True,
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.decode()
    assert not database.exists()  # no migration ran, no DBOS database was opened
    assert not database.with_suffix(".dbos.sqlite3").exists()


def test_a_second_process_with_the_same_executor_id_refuses_to_start(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    first_port = free_port()
    with running(
        ehi_command("serve", "--port", str(first_port)),
        service_env,
        ready_url=f"http://127.0.0.1:{first_port}/healthz",
        log_path=tmp_path / "first.log",
    ) as first:
        second = subprocess.run(
            ehi_command("serve", "--port", str(free_port())),
            env={**os.environ, **service_env},
            capture_output=True,
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
        assert second.returncode == 1
        assert "executor id 'local'" in second.stderr.decode()
        assert "EHI_EXECUTOR_ID" in second.stderr.decode()
        worker = subprocess.run(
            ehi_command("worker"),
            env={**os.environ, **service_env},
            capture_output=True,
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
        assert worker.returncode == 1
        assert "executor id 'local'" in worker.stderr.decode()
        assert first.poll() is None  # the running one is untouched

    other_id = {**service_env, "EHI_EXECUTOR_ID": "second"}
    with (
        running(
            ehi_command("serve", "--port", str(first_port)),
            service_env,
            ready_url=f"http://127.0.0.1:{first_port}/healthz",
            log_path=tmp_path / "again.log",
        ),
        running(
            ehi_command("worker"),
            other_id,
            ready_url=f"http://127.0.0.1:{first_port}/healthz",
            log_path=tmp_path / "worker.log",
        ) as worker_proc,
    ):
        assert worker_proc.poll() is None  # a different executor id runs beside it


def test_the_background_child_runs_niced_with_few_malloc_arenas(
    service_env: dict[str, str], start_service: ServerFactory
) -> None:
    with start_service(service_env) as (proc, _base):
        children: list[psutil.Process] = []
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not children and time.monotonic() < deadline:
            children = [
                child
                for child in psutil.Process(proc.pid).children()
                if "ehi_bridge.background.child" in child.cmdline()
            ]
            time.sleep(0.1)
        (child,) = children
        assert child.environ().get("MALLOC_ARENA_MAX") == "2"
        while child.nice() != 5 and time.monotonic() < deadline:  # it renices as it starts
            time.sleep(0.1)
        assert child.nice() == 5
        # ... all but, on SQLite, the applier, which holds the write gate there and must not
        # be scheduled behind other threads while the receiver waits for it. Threads start
        # after the renice: wait for the applier and for a niced thread beside it.
        applier_nice: list[int] = []
        others: list[int] = []
        while time.monotonic() < deadline:
            applier_nice, others = [], []
            for task, name, nice in threads_of(child.pid):
                if name == APPLIER_THREAD_NAME:
                    applier_nice.append(nice)
                elif task != child.pid:
                    others.append(nice)
            if applier_nice and 5 in others:
                break
            time.sleep(0.1)
        on_sqlite = service_env["EHI_DATABASE_URL"].startswith("sqlite")
        assert applier_nice == [0 if on_sqlite else 5]
        assert 5 in others
