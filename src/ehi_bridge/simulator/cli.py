"""`ehi-bridge simulator …` commands: ``serve`` runs the simulator; ``scenario …`` drives a
running one through its control API (``/_sim/…``)."""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, help="simulator commands")
scenario = typer.Typer(no_args_is_help=True, help="drive a running simulator (control API)")
app.add_typer(scenario, name="scenario")

DEFAULT_URL = "http://127.0.0.1:8900"


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address of both servers"),
    port: int = typer.Option(8900, help="Fasten API port"),
    storage_port: int = typer.Option(8901, help="storage server port"),
    webhook_url_test: str | None = typer.Option(None, help="test-mode webhook URL"),
    webhook_url_live: str | None = typer.Option(None, help="live-mode webhook URL"),
    api_public_host: str = typer.Option("127.0.0.1", help="host name in API URLs"),
    storage_public_host: str = typer.Option("localhost", help="host name in storage URLs"),
    control_token: str | None = typer.Option(
        None, envvar="EHI_SIMULATOR_CONTROL_TOKEN", help="require X-Sim-Token on /_sim"
    ),
    export_delay: float = typer.Option(2.0, help="simulated seconds before an export is done"),
    retry_initial_delay: float = typer.Option(30.0, help="first webhook retry delay (s)"),
    retry_factor: float = typer.Option(15.0, help="webhook retry backoff factor"),
    max_retries: int = typer.Option(4, help="webhook retries after the first attempt"),
) -> None:
    """Run the Fasten Connect simulator (keys and secrets from the EHI_* settings)."""
    from ehi_bridge.config import Settings
    from ehi_bridge.logging import configure_logging
    from ehi_bridge.simulator.config import SimulatorConfig
    from ehi_bridge.simulator.server import SimulatorServer

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)

    config = SimulatorConfig.from_env(
        webhook_url_test=webhook_url_test,
        webhook_url_live=webhook_url_live,
        host=host,
        port=port,
        storage_host=host,
        storage_port=storage_port,
        api_public_host=api_public_host,
        storage_public_host=storage_public_host,
        control_token=control_token,
        default_export_delay_seconds=export_delay,
        retry_initial_delay_seconds=retry_initial_delay,
        retry_factor=retry_factor,
        max_retries=max_retries,
    )
    for mode, cfg in config.modes.items():
        if cfg.webhook_url and not cfg.webhook_secrets:
            raise typer.BadParameter(f"EHI_{mode.upper()}_WEBHOOK_SECRETS is required")
    server = SimulatorServer(config).start()
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    typer.echo(f"Fasten API:      {server.fasten_api_url}")
    typer.echo(f"storage:         {server.storage_url}")
    typer.echo(f"widget:          {server.stitch_js_url}  ({server.api_url}/widget)")
    typer.echo(f"control API:     {server.api_url}/_sim")
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()


@app.command()
def smart(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8910, help="port"),
    public_host: str = typer.Option("127.0.0.1", help="host name in URLs"),
    url: str | None = typer.Option(None, help="full base URL in links (e.g. behind a proxy)"),
    access_token_ttl: float = typer.Option(300.0, help="access token lifetime (s)"),
    fixed_patient: str | None = typer.Option(None, help="consent offers only this Patient id"),
) -> None:
    """Run the SMART-on-FHIR EHR sandbox (profiles generic, epic, cerner, athena)."""
    from ehi_bridge.config import Settings
    from ehi_bridge.logging import configure_logging
    from ehi_bridge.simulator.smart.config import PROFILES, SmartConfig
    from ehi_bridge.simulator.smart.server import SmartSandbox

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    config = SmartConfig(
        host=host,
        port=port,
        public_host=public_host,
        url_override=url,
        access_token_ttl_seconds=access_token_ttl,
        fixed_patient_id=fixed_patient,
    )
    sandbox = SmartSandbox(config)
    base = sandbox.start()
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for profile in PROFILES:
        typer.echo(f"{profile + ':':<17}{sandbox.fhir_base(profile)}")
    typer.echo(f"control API:     {base}/_smart")
    try:
        while not done.wait(0.5):
            pass
    finally:
        sandbox.stop()


# --- scenario -------------------------------------------------------------------------------

UrlOpt = Annotated[
    str, typer.Option("--url", envvar="EHI_SIMULATOR_URL", help="the simulator's API URL")
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="EHI_SIMULATOR_CONTROL_TOKEN", help="X-Sim-Token")
]


def _call(url: str, token: str | None, method: str, path: str, body: Any = None) -> Any:
    import httpx
    import orjson

    headers = {"X-Sim-Token": token} if token else {}
    try:
        response = httpx.request(
            method, f"{url.rstrip('/')}/_sim{path}", json=body, headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the simulator at {url}: {type(exc).__name__}", err=True)
        raise typer.Exit(2) from exc
    if response.status_code >= 400:
        typer.echo(f"simulator answered {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    result = response.json()
    typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return result


def _pairs(values: list[str]) -> dict[str, Any]:
    import orjson

    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected key=value, got {item!r}")
        try:
            out[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[key] = raw
    return out


SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="behaviour field=value, e.g. fail_reason=token_refresh_failure, scale=10"
    ),
]


@scenario.command()
def connect(
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    count: int = typer.Option(1, help="how many patients connect"),
    mode: str = typer.Option("test"),
    external_id: Annotated[list[str] | None, typer.Option(help="one per patient")] = None,
    platform: str | None = typer.Option(None, help="epic, cerner, athena, nextgen, cms"),
    patient: int | None = typer.Option(None, help="synthetic patient index"),
    behaviour: SetOpt = None,
    no_webhook: bool = typer.Option(False, help="do not send connection_success"),
) -> None:
    """Connect N patients (each sends patient.connection_success)."""
    _call(
        url,
        token,
        "POST",
        "/connections",
        {
            "count": count,
            "mode": mode,
            "external_ids": external_id or None,
            "platform": platform,
            "patient_index": patient,
            "behaviour": _pairs(behaviour or []) or None,
            "send_webhook": not no_webhook,
        },
    )


@scenario.command("set")
def set_behaviour(
    org_connection_id: str,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    behaviour: SetOpt = None,
) -> None:
    """Change a connection's behaviour (delay, failure, malformed lines, scale, …)."""
    _call(
        url,
        token,
        "PATCH",
        f"/connections/{org_connection_id}/behaviour",
        _pairs(behaviour or []),
    )


@scenario.command()
def default(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, behaviour: SetOpt = None) -> None:
    """Set the behaviour of connections made from now on (e.g. through the widget)."""
    _call(url, token, "PATCH", "/behaviour/default", _pairs(behaviour or []))


@scenario.command()
def revoke(
    org_connection_ids: Annotated[list[str] | None, typer.Argument()] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    count: int | None = typer.Option(None, help="revoke this many authorized connections"),
    all_: bool = typer.Option(False, "--all", help="revoke every authorized connection"),
) -> None:
    """Revoke connections (bulk patient.authorization_revoked)."""
    _call(
        url,
        token,
        "POST",
        "/revoke",
        {"org_connection_ids": org_connection_ids, "count": count, "all": all_},
    )


@scenario.command()
def export(org_connection_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Request an export for a connection (as the app would)."""
    _call(url, token, "POST", "/exports", {"org_connection_id": org_connection_id})


@scenario.command("webhook-test")
def webhook_test(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, mode: str = "test") -> None:
    """Send a webhook.test event."""
    _call(url, token, "POST", "/webhooks/test", {"mode": mode})


@scenario.command()
def hold(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Hold new webhooks until `release`."""
    _call(url, token, "POST", "/webhooks/hold")


@scenario.command()
def release(
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    order: str = typer.Option("reverse", help="fifo, reverse or shuffle"),
) -> None:
    """Release held webhooks in another order."""
    _call(url, token, "POST", "/webhooks/release", {"order": order})


@scenario.command()
def advance(seconds: float, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Advance the simulated clock."""
    _call(url, token, "POST", "/clock/advance", {"seconds": seconds})


@scenario.command()
def deliveries(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """List webhook deliveries and their attempts."""
    _call(url, token, "GET", "/deliveries")


@scenario.command("storage-requests")
def storage_requests(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """List what the storage server received."""
    _call(url, token, "GET", "/storage/requests")


@scenario.command()
def state(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Counts and the simulated clock."""
    _call(url, token, "GET", "/state")


@scenario.command()
def reset(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Forget every connection, export and delivery; reset the clock."""
    _call(url, token, "POST", "/reset")
