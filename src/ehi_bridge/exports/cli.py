"""``ehi-bridge exports …``: request, retry and list exports.

A request creates the export row; the background runtime (``serve`` or ``worker``, in any
process on the same database) picks it up and asks Fasten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from ehi_bridge.db.engine import Database
    from ehi_bridge.exports.models import Export

app = typer.Typer(no_args_is_help=True, help="Request, retry and list EHI exports.")


def _db() -> Database:
    from ehi_bridge.config import Settings
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import ensure_schema

    settings = Settings()
    ensure_schema(settings.resolved_database_url)
    return Database(settings.resolved_database_url)


def _request(action: str, run: Callable[[], Export]) -> None:
    from ehi_bridge.exports import service

    try:
        export = run()
    except LookupError as exc:
        typer.echo(f"not found: {exc}", err=True)
        raise typer.Exit(1) from exc
    except service.ExportNotAllowed as exc:
        typer.echo(f"cannot {action}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"export {export.id} {export.status} (connection {export.connection_id})")


@app.command("request")
def request(
    connection: str = typer.Argument(..., help="Our connection id or org_connection_id."),
) -> None:
    """Ask Fasten for a new export of an authorized connection."""
    from ehi_bridge.exports import service

    db = _db()
    try:
        _request("request", lambda: service.request_export(db, connection, trigger="manual"))
    finally:
        db.dispose()


@app.command("retry")
def retry(export_id: int = typer.Argument(..., help="The export to retry.")) -> None:
    """Request a fresh export for the connection of a failed/expired/timed-out export."""
    from ehi_bridge.exports import service

    db = _db()
    try:
        _request("retry", lambda: service.retry_export(db, export_id))
    finally:
        db.dispose()


@app.command("list")
def list_exports(
    status: str | None = typer.Option(None, help="Only exports in this status."),
    limit: int = typer.Option(50, min=1, max=1000),
) -> None:
    """The most recent exports."""
    from rich.console import Console
    from rich.table import Table

    from ehi_bridge.exports import repository

    db = _db()
    try:
        with db.read_session() as session:
            rows = repository.recent(session, limit, status)
    finally:
        db.dispose()
    table = Table("id", "connection", "status", "task", "resources", "reason", "created")
    for e in rows:
        table.add_row(
            str(e.id),
            e.connection_id,
            e.status,
            e.task_id or "",
            "" if e.ingested_total is None else str(e.ingested_total),
            e.failure_reason or "",
            e.created_at.isoformat(timespec="seconds"),
        )
    Console(width=160).print(table)
