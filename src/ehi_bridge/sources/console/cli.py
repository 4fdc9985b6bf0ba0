"""``ehi-bridge sources console``: the local developer console for SMART sources.

Binds 127.0.0.1 by default and needs no login there. Another address needs
``--allow-remote`` and a token (``--token`` or ``EHI_CONSOLE_TOKEN``) that every request
must then carry. ``--with-sandbox`` starts the simulator's SMART EHR sandbox in this
process, so one command gives a console with something to connect to.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import typer

MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_refusal(host: str, allow_remote: bool, token: str | None) -> str | None:
    """Why binding ``host`` is refused (None: allowed)."""
    if is_loopback(host):
        return None
    if not allow_remote:
        return f"{host} is not a loopback address: add --allow-remote (and a --token)"
    if not token or len(token) < MIN_TOKEN_LENGTH:
        return f"binding {host} needs a console token of {MIN_TOKEN_LENGTH}+ characters"
    return None


def console_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(9999, "--port", help="Port."),
    sandbox_url: str = typer.Option(
        "", "--sandbox-url", help="A running `ehi-bridge simulator smart` (its base URL)."
    ),
    with_sandbox: bool = typer.Option(
        False, "--with-sandbox", help="Start the SMART sandbox in this process."
    ),
    out_dir: Path = typer.Option(
        Path("console-syncs"), "--out-dir", help="Where 'sync all' writes NDJSON files."
    ),
    definitions_file: Path | None = typer.Option(
        None,
        "--definitions-file",
        help="User platform definitions ('save'); default EHI_SOURCES_DEFINITIONS_FILE.",
    ),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow a non-loopback --host (needs --token)."
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="EHI_CONSOLE_TOKEN", help="Token every request must carry."
    ),
) -> None:
    """Try SMART sources by hand: OAuth flow, FHIR GETs, sync all, save a definition."""
    refusal = bind_refusal(host, allow_remote, token)
    if refusal is not None:
        typer.echo(f"refused: {refusal}", err=True)
        raise typer.Exit(2)

    import uvicorn

    from ehi_bridge.config import Settings
    from ehi_bridge.logging import configure_logging
    from ehi_bridge.simulator.smart.server import SmartSandbox
    from ehi_bridge.sources.console.endpoints import create_console_app
    from ehi_bridge.sources.console.service import Console
    from ehi_bridge.sources.definitions import use_user_definitions

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    definitions = definitions_file or settings.sources_definitions_file
    use_user_definitions(definitions)
    sandbox = SmartSandbox() if with_sandbox else None
    if sandbox is not None:
        sandbox_url = sandbox.start()
    try:
        console = Console(
            settings, sandbox_url=sandbox_url, out_dir=out_dir, definitions_file=definitions
        )
        app = create_console_app(console, token or None)
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"source console: http://{shown}:{port}/")
        if console.sandbox_url:
            typer.echo(f"SMART sandbox:  {console.sandbox_url}")
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
    finally:
        if sandbox is not None:
            sandbox.stop()
