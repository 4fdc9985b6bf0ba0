"""The ``ehi-bridge`` command line (Typer). Each feature contributes its own sub-commands."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer

from ehi_bridge.auth.cli import app as auth_app
from ehi_bridge.config import Settings
from ehi_bridge.exports.cli import app as exports_app
from ehi_bridge.records.cli import app as records_app
from ehi_bridge.records.cli import import_command
from ehi_bridge.simulator.cli import app as simulator_app

app = typer.Typer(
    no_args_is_help=True, help="ehi-bridge: Fasten Connect webhooks, exports and records."
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")
app.add_typer(exports_app, name="exports")
app.add_typer(records_app, name="records")
app.command("import")(import_command)
app.add_typer(auth_app, name="auth")
app.add_typer(simulator_app, name="simulator")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema of the configured database."""
    from ehi_bridge.config import Settings
    from ehi_bridge.db.migrate import upgrade

    upgrade(Settings().resolved_database_url)
    typer.echo("database is at the latest schema")


def _exit_now(code: int = 0) -> NoReturn:
    """Leave without joining DBOS's worker threads: a workflow in a durable sleep (an export
    waiting for its deadline) would hold the process for up to an hour. Everything is
    committed; DBOS resumes those workflows on the next start."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _settings() -> Settings:
    from ehi_bridge.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return settings


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    background: bool = typer.Option(
        True, help="Also run background processing (off: run `ehi-bridge worker` beside it)."
    ),
    workers: int = typer.Option(
        1, min=1, help="Web processes sharing the port (more than one needs --no-background)."
    ),
) -> None:
    """Run the web service (webhooks, API, dashboard) and background processing."""
    import signal

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from ehi_bridge.background.executor_lock import ExecutorIdInUse, ExecutorLock
    from ehi_bridge.db.migrate import ensure_schema
    from ehi_bridge.server import Service
    from ehi_bridge.webhooks.http_protocol import protocol_for

    if workers > 1 and background:
        raise typer.BadParameter("--workers > 1 needs --no-background and an `ehi-bridge worker`")
    settings = _settings()
    config = uvicorn.Config(
        "ehi_bridge.server:web_only_app",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol_for(settings.max_header_bytes, settings.header_timeout_seconds),
        lifespan="on",
        access_log=False,
        # Client addresses (login throttling, audit) come from X-Forwarded-For only
        # when the peer is a configured proxy.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        server_header=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
    # The port first: a process that cannot serve must not migrate or recover anything.
    try:
        sock = config.bind_socket()
    except SystemExit:
        typer.echo(f"error: cannot listen on {host}:{port} (in use?)", err=True)
        _exit_now(1)
    lock = None
    if background:
        lock = ExecutorLock(settings.resolved_database_url, settings.executor_id)
        try:
            lock.acquire(wait_seconds=5.0)
        except ExecutorIdInUse as exc:
            typer.echo(f"error: {exc}", err=True)
            _exit_now(1)
    ensure_schema(settings.resolved_database_url)
    # uvicorn re-raises the signal that stopped it after its graceful shutdown: Ctrl-C as
    # KeyboardInterrupt, SIGTERM by the default action (exit status -15). A clean shutdown
    # is a success: ignore the re-raised SIGTERM and exit 0 below.
    signal.signal(signal.SIGTERM, lambda *_: None)
    started = True
    with contextlib.suppress(KeyboardInterrupt):
        if workers > 1:
            Multiprocess(config, sockets=[sock]).run()
        else:
            config.app = Service(settings, background=background)
            config.factory = False
            server = uvicorn.Server(config)
            server.run(sockets=[sock])
            started = server.started
    if lock is not None:
        lock.release()
    _exit_now(0 if started else 3)


@app.command()
def worker() -> None:
    """Run background processing only (scale-out next to ``serve`` on PostgreSQL)."""
    import signal
    import threading

    from ehi_bridge.background.executor_lock import ExecutorIdInUse, ExecutorLock
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import ensure_schema
    from ehi_bridge.runtime import Runtime

    settings = _settings()
    lock = ExecutorLock(settings.resolved_database_url, settings.executor_id)
    try:
        lock.acquire(wait_seconds=5.0)
    except ExecutorIdInUse as exc:
        typer.echo(f"error: {exc}", err=True)
        _exit_now(1)
    ensure_schema(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    runtime = Runtime(settings, db, lock_held_by_caller=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runtime.start()
    try:
        stop.wait()
    finally:
        runtime.stop()
        db.dispose()
        lock.release()
    _exit_now(0)


@app.command()
def stats(json_output: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Counts of deliveries, events, connections, exports and resources."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    from ehi_bridge import stats as stats_module
    from ehi_bridge.db.engine import Database

    settings = Settings()
    db = Database(settings.resolved_database_url)
    try:
        with db.read_session() as session:
            data = stats_module.collect(session)
    finally:
        db.dispose()
    if json_output:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        return
    table = Table("what", "count")
    for key, value in data.items():
        table.add_row(key, str(value))
    Console().print(table)


DEMO_MAX_PATIENTS = 100


@app.command()
def demo(
    port: int = typer.Option(8000, help="Port of the service."),
    data_dir: Path = typer.Option(Path("./data/demo"), help="Where the demo's SQLite lives."),
    patients: int = typer.Option(
        3, min=1, max=DEMO_MAX_PATIENTS, help="Simulated patients to connect."
    ),
    exit_when_done: bool = typer.Option(False, help="Stop once the records have landed."),
) -> None:
    """Run ehi-bridge and the Fasten simulator with sample patients (SQLite, nothing to set up)."""
    from ehi_bridge.demo import run_demo
    from ehi_bridge.logging import configure_logging

    configure_logging("WARNING")
    try:
        code = run_demo(port, data_dir, patients, exit_when_done)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        code = 0
    _exit_now(code)
