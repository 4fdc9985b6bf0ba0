"""``ehi-bridge sources …``: SMART platforms and institutions, and syncs.

- ``sources list``: the platform definitions and the institution catalog.
- ``sources sync --connection ID``: sync a stored SMART connection here and now (its
  records go through the ingest like any export).
- ``sources sync --base-url URL --token TOKEN --patient ID``: a one-off pull to an NDJSON
  file, nothing stored (the token is used as given, never written anywhere).
"""

from __future__ import annotations

from pathlib import Path

import typer

from ehi_bridge.sources.console.cli import console_command

app = typer.Typer(no_args_is_help=True, help="SMART-on-FHIR sources: platforms and syncs.")
app.command("console")(console_command)


@app.command("list")
def list_sources() -> None:
    """Platforms (how each EHR is reached) and the institution catalog."""
    from rich.console import Console
    from rich.table import Table

    from ehi_bridge.config import Settings
    from ehi_bridge.sources.definitions import definitions, load_catalog, use_user_definitions

    settings = Settings()
    use_user_definitions(settings.sources_definitions_file)
    platforms = Table("platform", "name", "client auth", "$everything", "searches with extras")
    for p in definitions().platforms:
        extras = ", ".join(sorted(p.search_params)) or (
            "patient on every search" if p.patient_param_on_every_search else ""
        )
        platforms.add_row(p.id, p.name, p.token_auth, "yes" if p.everything else "no", extras)
    institutions = Table("institution", "name", "platform", "FHIR base URL")
    for i in load_catalog(settings.sources_catalog_file):
        institutions.add_row(i.id, i.name, i.platform, i.fhir_base_url)
    console = Console(width=160)
    console.print(platforms)
    console.print(institutions)


@app.command("sync")
def sync(
    connection: str | None = typer.Option(None, "--connection", help="A stored SMART connection."),
    base_url: str | None = typer.Option(None, "--base-url", help="One-off: the FHIR base URL."),
    token: str | None = typer.Option(
        None, "--token", envvar="EHI_SOURCE_TOKEN", help="One-off: a bearer access token."
    ),
    patient: str | None = typer.Option(None, "--patient", help="One-off: the Patient id."),
    platform: str = typer.Option("generic", "--platform", help="One-off: the platform's quirks."),
    out: Path = typer.Option(Path("sync.ndjson"), "--out", help="One-off: the NDJSON file."),
) -> None:
    """Sync a stored connection, or pull once with a token into an NDJSON file."""
    if connection and (base_url or token):
        raise typer.BadParameter("give --connection, or --base-url with --token, not both")
    if connection:
        _sync_connection(connection)
        return
    if not (base_url and token and patient):
        raise typer.BadParameter("give --connection, or --base-url, --token and --patient")
    _pull_once(base_url, token, patient, platform, out)


def _sync_connection(connection_id: str) -> None:
    import asyncio

    from ehi_bridge.cli import _settings
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import ensure_schema
    from ehi_bridge.exports import repository as exports_repo
    from ehi_bridge.sources import service
    from ehi_bridge.sources.definitions import use_user_definitions
    from ehi_bridge.sources.fetch import HostLimiter

    settings = _settings()
    use_user_definitions(settings.sources_definitions_file)
    ensure_schema(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        try:
            export_id = service.start_sync_here(db, connection_id)
        except LookupError as exc:
            typer.echo(f"not found: {exc}", err=True)
            raise typer.Exit(1) from exc
        except service.SourceConfigError as exc:
            typer.echo(f"cannot sync: {exc}", err=True)
            raise typer.Exit(1) from exc
        limiter = HostLimiter(settings.source_max_in_flight_per_host)
        outcome = asyncio.run(service.run_sync(db, settings, limiter, export_id))
        with db.read_session() as session:
            export = exports_repo.get(session, export_id)
            assert export is not None
            typer.echo(
                f"sync {export.id} {export.status}: {export.ingested_total or 0} resources"
                + (f" ({export.failure_reason})" if export.failure_reason else "")
            )
    finally:
        db.dispose()
    if outcome == "failed":
        raise typer.Exit(1)


class _GivenToken:
    """A token given on the command line: used as is, never refreshed."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    async def rejected(self, token: str) -> str:
        from ehi_bridge.sources.fetch import FailureReason, SyncError

        raise SyncError(FailureReason.UNAUTHORIZED, "the token was refused")


def _pull_once(base_url: str, token: str, patient: str, platform_id: str, out: Path) -> None:
    import asyncio

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ehi_bridge.config import Settings
    from ehi_bridge.sources import service
    from ehi_bridge.sources.definitions import definitions
    from ehi_bridge.sources.fetch import HostLimiter, SyncError
    from ehi_bridge.sources.sync import Spool

    settings = Settings()
    try:
        platform = definitions().platform(platform_id)
    except KeyError:
        raise typer.BadParameter(f"unknown platform {platform_id!r}") from None
    target = service.SyncTarget(0, "", platform, base_url.rstrip("/"), patient, "")
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=False
    ) as progress:
        task = progress.add_task("0 resources", total=None)

        def advance(count: int) -> None:
            progress.update(task, description=f"{count} resources")

        try:
            with Spool(out, "ndjson") as spool:
                result = asyncio.run(
                    service.pull(
                        settings,
                        _GivenToken(token),
                        target,
                        spool,
                        HostLimiter(settings.source_max_in_flight_per_host),
                        advance,
                    )
                )
        except SyncError as exc:
            typer.echo(f"sync failed: {exc.reason}", err=True)
            raise typer.Exit(1) from None
    problems = "".join(f"\n  {k}: {v}" for k, v in sorted(result.problems.items()))
    typer.echo(f"{result.total} resources written to {out}{problems}")
