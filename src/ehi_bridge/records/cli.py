"""`ehi-bridge import FILE --connection ID` and `ehi-bridge records …` commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from ehi_bridge.config import Settings

app = typer.Typer(no_args_is_help=True, help="Stored FHIR records.")

EXIT_DATA = 65  # the input file is empty or not JSON (sysexits EX_DATAERR)


def quiet_log_level(settings: Settings) -> str:
    """One-shot commands report on stdout and keep stderr for problems: WARNING unless
    EHI_LOG_LEVEL was set explicitly."""
    return settings.log_level if "log_level" in settings.model_fields_set else "WARNING"


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
    """Ingest a FHIR export file. An unknown connection becomes a `manual` connection."""
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
    from ehi_bridge.db.migrate import ensure_schema
    from ehi_bridge.logging import configure_logging
    from ehi_bridge.records.ingest import ingest_file

    refuse_unreadable_input(file)
    settings = Settings()
    configure_logging(quiet_log_level(settings), settings.log_json)  # logs go to stderr
    url = settings.resolved_database_url
    ensure_schema(url)
    db = Database(url)
    console = Console(stderr=True)
    try:
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
            )
    finally:
        db.dispose()
    if json_output:
        typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_report(report.as_dict())
    if not report.complete:
        raise typer.Exit(code=2)


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
        "duplicates",
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
) -> None:
    """Write a connection's stored resources as NDJSON, byte for byte as received."""
    from ehi_bridge.config import Settings
    from ehi_bridge.connections.repository import find
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import ensure_schema
    from ehi_bridge.logging import configure_logging
    from ehi_bridge.records.repository import iter_raw

    settings = Settings()
    configure_logging(quiet_log_level(settings), settings.log_json)  # stdout: the NDJSON
    url = settings.resolved_database_url
    ensure_schema(url)
    db = Database(url)
    try:
        with db.read_session() as session:
            found = find(session, connection)
            connection_id = found.id if found is not None else None
        if connection_id is None:
            typer.echo(f"unknown connection: {connection}", err=True)
            raise typer.Exit(code=1)
        if out == "-":
            sink = sys.stdout.buffer
            for chunk in iter_raw(db, [connection_id], resource_type):
                sink.write(chunk)
            sink.flush()
        else:
            target = Path(out)
            partial = target.with_name(target.name + ".part")
            with partial.open("wb") as f:
                for chunk in iter_raw(db, [connection_id], resource_type):
                    f.write(chunk)
            partial.replace(target)
    finally:
        db.dispose()
