"""The ``ehi-bridge`` command line (Typer). Each feature contributes its own sub-commands.

Start-up stays instant: this module and every feature's ``cli`` module import only Typer at
the top, and each command imports what it needs when it runs (``--help`` never loads
SQLAlchemy, FastAPI or DBOS). ``main`` turns errors into one line on stderr and an exit code
(``--debug`` shows the traceback instead):

====  ===========================================================
0     success
1     the operation was refused or failed (a message says why)
2     usage error (a bad option or argument)
65    the input file is empty or not what the command reads
69    the database cannot be reached or opened
74    a file or folder cannot be read or written
78    a setting (EHI_*) has an invalid value
130   interrupted (Ctrl-C)
====  ===========================================================
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from ehi_bridge.auth.cli import app as auth_app
from ehi_bridge.auth.cli import connect_link_app
from ehi_bridge.exports.cli import app as exports_app
from ehi_bridge.records.cli import app as records_app
from ehi_bridge.records.cli import import_command
from ehi_bridge.simulator.cli import app as simulator_app
from ehi_bridge.sources.cli import app as sources_app

if TYPE_CHECKING:
    from ehi_bridge.config import Settings

EXIT_FAILED = 1
EXIT_DATA = 65
EXIT_UNAVAILABLE = 69
EXIT_IO = 74
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130

app = typer.Typer(
    no_args_is_help=True,
    help="ehi-bridge: Fasten Connect webhooks, exports and records.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")
app.add_typer(exports_app, name="exports")
app.add_typer(records_app, name="records")
app.command("import")(import_command)
app.add_typer(auth_app, name="auth")
app.add_typer(connect_link_app, name="connect-link")
app.add_typer(simulator_app, name="simulator")
app.add_typer(sources_app, name="sources")


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="On an error, print the full traceback instead of one line."
    ),
) -> None:
    """ehi-bridge: Fasten Connect webhooks, exports and records."""


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= 240 else line[:237] + "..."


def describe_error(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line printed for an error that escaped a command.

    Database errors name the driver's reason, never the URL (it may carry a password) nor
    the SQL statement."""
    sa_exc: Any = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(exc, sa_exc.DBAPIError):
        reason = _one_line(str(exc.orig)) if exc.orig is not None else type(exc).__name__
        if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            return EXIT_UNAVAILABLE, f"cannot use the database: {reason}"
        return EXIT_FAILED, f"database error ({type(exc.orig).__name__}): {reason}"
    if sa_exc is not None and isinstance(exc, sa_exc.ArgumentError):
        return EXIT_UNAVAILABLE, f"invalid database URL: {_one_line(str(exc))}"
    for driver in ("psycopg", "sqlite3"):  # a command that uses the driver itself (stats)
        module: Any = sys.modules.get(driver)
        if module is not None and isinstance(exc, module.Error):
            reason = _one_line(str(exc)) or type(exc).__name__
            if isinstance(exc, module.OperationalError | module.InterfaceError):
                return EXIT_UNAVAILABLE, f"cannot use the database: {reason}"
            return EXIT_FAILED, f"database error ({type(exc).__name__}): {reason}"
    pydantic_core: Any = sys.modules.get("pydantic_core")
    if pydantic_core is not None and isinstance(exc, pydantic_core.ValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(part) for part in first.get("loc", ()))
        name = f"EHI_{field.upper()}" if exc.title == "Settings" else field
        return EXIT_CONFIG, f"invalid setting {name}: {first.get('msg', 'invalid value')}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return EXIT_IO, f"{exc.strerror}{where}"
    detail = _one_line(str(exc))
    return EXIT_FAILED, (
        f"unexpected {type(exc).__name__}{': ' + detail if detail else ''} "
        "(run with --debug for the traceback)"
    )


def main(argv: list[str] | None = None) -> NoReturn:
    """The console script: run a command; errors as one line and an exit code.

    Typer handles usage errors (2), ``typer.Exit`` and Ctrl-C (130) itself."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args[: args.index("--") if "--" in args else len(args)]
    try:
        app(args=args, prog_name="ehi-bridge")
    except KeyboardInterrupt:  # outside a command (typer turns one inside into exit 130)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if debug:
            raise
        code, message = describe_error(exc)
        typer.echo(f"error: {message}", err=True)
        sys.exit(code)
    sys.exit(0)


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
    from ehi_bridge.config import Settings
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
    from ehi_bridge.webhooks.http_protocol import SettingsHttpProtocol, protocol_for

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
        http=(
            protocol_for(settings.max_header_bytes, settings.header_timeout_seconds)
            if workers == 1
            else SettingsHttpProtocol
        ),
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
    """Run background processing only (scale-out next to `serve` on PostgreSQL)."""
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

    from ehi_bridge import stats as stats_module
    from ehi_bridge.config import Settings

    url = Settings().resolved_database_url
    try:
        backend, target = stats_module.driver_target(url)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    # The driver itself, one connection: counting needs no SQLAlchemy (a third of start-up).
    if backend == "sqlite":
        import sqlite3

        if not Path(target).is_file():  # opening it would create it
            typer.echo(
                f"error: no database at {target} (set EHI_DATA_DIR or EHI_DATABASE_URL, "
                "or run `ehi-bridge db upgrade`)",
                err=True,
            )
            raise typer.Exit(EXIT_UNAVAILABLE)
        with contextlib.closing(sqlite3.connect(target)) as lite:
            data = stats_module.collect(lambda sql: lite.execute(sql).fetchall())
    else:
        import psycopg

        with psycopg.connect(target) as pg:
            data = stats_module.collect(lambda sql: pg.execute(sql).fetchall())
    if json_output:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        return
    # Plain aligned text (Rich would add ~0.2 s of start-up for a two-column table).
    for key, value in data.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        typer.echo(f"{key:<23}{value}")


@app.command()
def backup(
    out: Path = typer.Option(..., "--out", help="A new folder for the backup."),
) -> None:
    """Copy every SQLite database file (app and DBOS) as one consistent online snapshot
    each, safe while the service runs. PostgreSQL: use pg_dump (docs/operations.md)."""
    from ehi_bridge.ops import backup as backups

    try:
        manifest = backups.backup(_database_files(), out)
    except backups.BackupError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    entries: Any = manifest["files"]
    for entry in entries:
        typer.echo(f"{entry['role']:<5} {out / entry['file']}  {entry['bytes']} bytes")


def _database_files() -> Any:
    """The configured SQLite files (the app's and DBOS's); BackupError on PostgreSQL."""
    from ehi_bridge.config import Settings
    from ehi_bridge.ops import backup as backups

    settings = Settings()
    return backups.database_files(
        settings.resolved_database_url, settings.resolved_dbos_database_url
    )


@app.command()
def restore(
    folder: Path = typer.Argument(..., help="A folder written by `ehi-bridge backup`."),
) -> None:
    """Put a backup in place of the configured SQLite databases, which must not exist yet
    (restore into a fresh EHI_DATA_DIR, then start the service)."""
    from ehi_bridge.ops import backup as backups

    try:
        restored = backups.restore(folder, _database_files())
    except backups.BackupError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    for path in restored:
        typer.echo(f"restored {path}")


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
