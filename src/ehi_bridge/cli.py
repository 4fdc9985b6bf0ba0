"""The ``ehi-bridge`` command line (Typer). Each feature contributes its own sub-commands."""

from __future__ import annotations

import typer

from ehi_bridge.auth.cli import app as auth_app
from ehi_bridge.exports.cli import app as exports_app
from ehi_bridge.records.cli import app as records_app
from ehi_bridge.simulator.cli import app as simulator_app

app = typer.Typer(no_args_is_help=True, help="ehi-bridge: Fasten Connect webhooks, exports and records.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")
app.add_typer(exports_app, name="exports")
app.add_typer(records_app, name="records")
app.add_typer(auth_app, name="auth")
app.add_typer(simulator_app, name="simulator")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema of the configured database."""
    from ehi_bridge.config import Settings
    from ehi_bridge.db.migrate import upgrade

    upgrade(Settings().resolved_database_url)
    typer.echo("database is at the latest schema")
