"""`ehi-bridge import FILE --connection ID` and `ehi-bridge records …` commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from ehi_bridge.config import Settings
    from ehi_bridge.db.engine import Database

app = typer.Typer(no_args_is_help=True, help="Stored FHIR records.")

EXIT_DATA = 65  # the input file is empty or not JSON (sysexits EX_DATAERR)


def quiet_log_level(settings: Settings) -> str:
    """One-shot commands report on stdout and keep stderr for problems: WARNING unless
    EHI_LOG_LEVEL was set explicitly."""
    return settings.log_level if "log_level" in settings.model_fields_set else "WARNING"


def connection_id_or_exit(db: Database, connection: str) -> str:
    """The id of the connection named by id or org connection id; exit 1 with one line if none."""
    from ehi_bridge.connections.repository import find

    with db.read_session() as session:
        found = find(session, connection)
        connection_id = found.id if found is not None else None
    if connection_id is None:
        typer.echo(f"unknown connection: {connection}", err=True)
        raise typer.Exit(code=1)
    return connection_id


def refuse_unreadable_input(file: Path) -> None:
    """Exit with one line before anything is written when ``file`` cannot be an export:
    empty (or only whitespace), or not starting with a JSON object (NDJSON lines and a
    Bundle both do)."""
    with file.open("rb") as f:
        head = f.read(64 * 1024)
        while head and not head.strip():
            head = f.read(64 * 1024)
    first = head.lstrip()[:1]
    if not first:
        typer.echo(f"error: {file} is empty: nothing to import", err=True)
        raise typer.Exit(EXIT_DATA)
    if first != b"{":
        typer.echo(
            f"error: {file} is not JSON (expected NDJSON lines or a FHIR Bundle); "
            "nothing was imported",
            err=True,
        )
        raise typer.Exit(EXIT_DATA)


def import_command(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="NDJSON/JSONL or Bundle file."
    ),
    connection: str = typer.Option(
        ..., "--connection", help="Connection id (ours or Fasten's org_connection_id)."
    ),
    external_id: str | None = typer.Option(
        None, "--external-id", help="Your user id, for a connection created by this import."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Ingest a FHIR export file. An unknown connection becomes a `manual` connection.

    Exit status: 0 complete, 2 partial (rejected lines or counts that differ), 3 every line
    stored but some keys repeat with different content (each version is kept).
    """
    from ehi_bridge.records.parser_process import (
        QUARANTINE_BYTES,
        start_parsing,
        stop_ready_parser,
    )

    refuse_unreadable_input(file)
    # The parser process starts on the file now and parses ahead while this process
    # imports its settings and the database layer below (a few hundred ms on the other
    # core). It is told the default quarantine cut: should the settings name another, the
    # ingest discards it and starts one with theirs.
    start_parsing(file, quarantine_bytes=QUARANTINE_BYTES)
    try:
        import orjson
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        from ehi_bridge.config import Settings
        from ehi_bridge.connections.repository import ensure_manual_connection
        from ehi_bridge.db.engine import Database
        from ehi_bridge.db.revision import schema_is_current
        from ehi_bridge.logging import configure_logging
        from ehi_bridge.records.ingest import ingest_file

        settings = Settings()
        configure_logging(quiet_log_level(settings), settings.log_json)  # logs go to stderr
        url = settings.resolved_database_url
        db = Database(url)
    except BaseException:
        stop_ready_parser()
        raise
    console = Console(stderr=True)
    try:
        if not schema_is_current(db.engine):  # Alembic (~80 ms to import) only when needed
            from ehi_bridge.db.migrate import ensure_schema

            ensure_schema(url)
        with db.session() as session:
            connection_id = ensure_manual_connection(session, connection, external_id).id
        size = file.stat().st_size
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,  # no bar (nor its newline) in logs or pipes
        ) as bar:
            task = bar.add_task("ingesting", total=size)
            report = ingest_file(
                db,
                file,
                connection_id=connection_id,
                export_id=None,
                progress=lambda done: bar.update(task, completed=done),
                quarantine_bytes=settings.quarantine_max_bytes,
            )
    finally:
        stop_ready_parser()
        db.dispose()
    if json_output:
        typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_report(report.as_dict())
    if not report.complete:
        raise typer.Exit(code=2)
    if report.status == "conflicts":
        raise typer.Exit(code=3)


def _print_report(data: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table("", "", show_header=False, box=None)
    for key in (
        "connection_id",
        "status",
        "lines",
        "resources",
        "inserted",
        "updated",
        "unchanged",
        "run_id",
        "duplicates",
        "exact_repeats",
        "conflicts",
        "duplicate_key_lines",
        "errors",
        "seconds",
    ):
        summary.add_row(key, str(data[key]))
    console.print(summary)
    by_type = data.get("by_type") or {}
    if isinstance(by_type, dict) and by_type:
        table = Table("resource type", "count")
        for rtype, count in by_type.items():
            table.add_row(str(rtype), str(count))
        console.print(table)
    for sample in data.get("error_samples") or []:  # type: ignore[attr-defined]
        console.print(f"line {sample['line']}: {sample['reason']}")
    for c in data.get("conflict_samples") or []:  # type: ignore[attr-defined]
        console.print(
            f"conflict {c['resource_type']}/{c['resource_id']}: line {c['line']} differs "
            f"from line {c['previous_line']} (both versions kept)"
        )
    if data.get("errors") or data.get("conflicts") or data.get("duplicate_key_lines"):
        console.print(
            f"see: ehi-bridge records errors --connection {data['connection_id']} "
            f"--run {data['run_id']}"
        )
    for mismatch in data.get("mismatches") or []:  # type: ignore[attr-defined]
        console.print(
            f"mismatch {mismatch['resource_type'] or 'total'}: "
            f"expected {mismatch['expected']}, ingested {mismatch['ingested']}"
        )


@app.command("export")
def export_command(
    connection: str = typer.Option(
        ..., "--connection", help="Connection id (ours or Fasten's org_connection_id)."
    ),
    out: str = typer.Option(..., "--out", help="Output NDJSON file, or - for stdout."),
    resource_type: str | None = typer.Option(None, "--type", help="Only this resource type."),
    output_format: str = typer.Option(
        "ndjson", "--format", help="ndjson (one resource a line) or bundle (a collection)."
    ),
) -> None:
    """Write a connection's stored resources, byte for byte as received: NDJSON, or a
    Bundle whose every entry.resource is the stored bytes. NDJSON needs one line per
    resource: a resource that arrived pretty-printed (in a Bundle) has its line breaks
    written as spaces there (same length, same JSON); --format bundle keeps them."""
    from ehi_bridge.config import Settings
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import ensure_schema
    from ehi_bridge.logging import configure_logging
    from ehi_bridge.records.repository import iter_bundle, iter_raw

    if output_format not in ("ndjson", "bundle"):
        typer.echo("--format must be ndjson or bundle", err=True)
        raise typer.Exit(code=1)

    settings = Settings()
    configure_logging(quiet_log_level(settings), settings.log_json)  # stdout: the NDJSON
    url = settings.resolved_database_url
    ensure_schema(url)
    db = Database(url)
    try:
        connection_id = connection_id_or_exit(db, connection)
        writer = iter_bundle if output_format == "bundle" else iter_raw
        if out == "-":
            sink = sys.stdout.buffer
            for chunk in writer(db, [connection_id], resource_type):
                sink.write(chunk)
            sink.flush()
        else:
            target = Path(out)
            partial = target.with_name(target.name + ".part")
            with partial.open("wb") as f:
                for chunk in writer(db, [connection_id], resource_type):
                    f.write(chunk)
            partial.replace(target)
    finally:
        db.dispose()


@app.command("errors")
def errors_command(
    connection: str = typer.Option(
        ..., "--connection", help="Connection id (ours or Fasten's org_connection_id)."
    ),
    run: int | None = typer.Option(None, "--run", help="Only this ingest run."),
    kind: str | None = typer.Option(
        None, "--kind", help="rejected, conflict, exact_repeat or duplicate_keys."
    ),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many rows."),
    show_bytes: bool = typer.Option(False, "--bytes", help="Print rejected lines' bytes."),
) -> None:
    """The quarantine of a connection: rejected lines, conflicting and exact repeats,
    duplicate JSON keys; with line, reason and source run."""
    from ehi_bridge.config import Settings
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import ensure_schema
    from ehi_bridge.logging import configure_logging
    from ehi_bridge.records.quarantine import list_errors

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    url = settings.resolved_database_url
    ensure_schema(url)
    db = Database(url)
    try:
        connection_id = connection_id_or_exit(db, connection)
        with db.read_session() as session:
            rows = list_errors(session, connection_id, kind=kind, run_id=run, limit=limit)
            for row in rows:
                source = f"export {row.export_id}" if row.export_id else "import"
                where = f"run {row.run_id} ({source})"
                what = f"{row.resource_type}/{row.resource_id} " if row.resource_type else ""
                extra = f" (repeats line {row.previous_line})" if row.previous_line else ""
                size = ""
                if row.kind == "rejected":
                    size = f" [{row.raw_size} bytes"
                    if row.truncated:
                        size += f", truncated: first {len(row.raw or b'')} kept"
                    size += ", re-ingested]" if row.reingested_at else "]"
                typer.echo(
                    f"{where} line {row.line_number}: {row.kind}: {what}{row.reason}{extra}{size}"
                )
                if show_bytes and row.raw is not None:
                    sys.stdout.buffer.write(bytes(row.raw) + b"\n")
                    sys.stdout.flush()
            if not rows:
                typer.echo("nothing in quarantine")
    finally:
        db.dispose()


@app.command("reingest")
def reingest_command(
    connection: str = typer.Option(
        ..., "--connection", help="Connection id (ours or Fasten's org_connection_id)."
    ),
) -> None:
    """Ingest the quarantined (rejected) lines of a connection again, e.g. after a fix of
    the parser. Lines that still fail, or whose bytes were truncated, stay in quarantine
    and are listed with the reason."""
    from ehi_bridge.config import Settings
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import ensure_schema
    from ehi_bridge.logging import configure_logging
    from ehi_bridge.records.service import reingest_quarantine

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    url = settings.resolved_database_url
    ensure_schema(url)
    db = Database(url)
    try:
        connection_id = connection_id_or_exit(db, connection)
        outcome = reingest_quarantine(db, connection_id, settings.quarantine_max_bytes)
    finally:
        db.dispose()
    for line in outcome.refused:
        typer.echo(line)
    typer.echo(
        f"re-ingested {outcome.stored} line(s); {len(outcome.refused)} stay in quarantine"
        + (f" (run {outcome.run_id})" if outcome.run_id is not None else "")
    )
    if outcome.refused:
        raise typer.Exit(code=2)
