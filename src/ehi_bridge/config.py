"""Settings, read from environment variables (prefix ``EHI_``) and an optional ``.env`` file."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Mode = Literal["test", "live"]
MODES: tuple[Mode, ...] = ("test", "live")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service. Secrets are ``SecretStr`` so they never print."""

    model_config = SettingsConfigDict(
        env_prefix="EHI_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Path("./data")
    database_url: str | None = None
    dbos_database_url: str | None = Field(
        default=None, description="DBOS system database; default: beside the app database"
    )
    executor_id: str = Field(
        default="local", description="Stable and unique per process for DBOS recovery"
    )
    app_version: str = Field(default="", description="Pinned DBOS application version")

    test_webhook_secrets: Annotated[list[SecretStr], NoDecode] = []
    live_webhook_secrets: Annotated[list[SecretStr], NoDecode] = []
    test_public_id: str = ""
    test_private_key: SecretStr = SecretStr("")
    live_public_id: str = ""
    live_private_key: SecretStr = SecretStr("")
    fasten_api_url: str = "https://api.connect.fastenhealth.com/v1"
    fasten_auth_scheme: Literal["basic", "bearer"] = "basic"
    download_allowed_hosts: Annotated[list[str], NoDecode] = []

    webhook_max_body_bytes: int = 1024 * 1024
    webhook_tolerance_seconds: int = 300
    webhook_max_json_depth: int = Field(
        default=32, ge=2, le=200, description="Deeper webhook bodies are refused (400)"
    )
    signature_failure_alert_threshold: int = 20
    signature_failure_alert_window_seconds: float = 60.0
    event_max_attempts: int = 5
    event_retry_interval_seconds: float = 1.0
    apply_batch_size: int = Field(
        default=256, ge=1, le=5000, description="Inbox events applied per transaction"
    )

    background_process: bool = Field(
        default=True,
        description="serve runs its background work in a child process (lower priority)",
    )
    fasten_requests_per_second: float = Field(
        default=20.0, ge=0, description="Cap on export requests to Fasten per process (0: none)"
    )
    fasten_request_concurrency: int = Field(default=8, ge=1)
    download_concurrency: int = Field(default=8, ge=1)
    ingest_concurrency: int = Field(default=2, ge=1)
    sweep_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often deadlines and stalls are checked"
    )
    export_stall_minutes: float = Field(
        default=10, gt=0, description="An export our side has not moved for this long is alerted"
    )

    auto_request_export: bool = True
    export_deadline_minutes: float = 30
    export_deadline_minutes_by_platform: dict[str, float] = {"epic": 60}
    export_file_lifetime_hours: int = 24
    rerequest_expired_exports: bool = True
    revoked_records: Literal["keep", "purge"] = "keep"
    # Bytes of a rejected line kept in the quarantine; longer lines are cut (and marked).
    quarantine_max_bytes: int = Field(default=1024 * 1024, ge=0)

    alert_slack_webhook_url: SecretStr | None = None
    alert_http_url: str | None = None
    alert_http_secret: SecretStr | None = None
    downstream_url: str | None = None
    downstream_secret: SecretStr | None = None

    session_secret: SecretStr | None = None
    connect_link_secret: SecretStr | None = None
    public_base_url: str = "http://127.0.0.1:8000"
    stitch_js_url: str = Field(
        default="https://cdn.fastenhealth.com/connect/v4/fasten-stitch.js",
        description="Where the connect page loads Fasten's widget (the simulator's /stitch.js)",
    )
    connect_mode: Mode = Field(default="test", description="Mode of the connect page's widget")

    api_max_body_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Largest body of an API or dashboard request"
    )
    public_max_body_bytes: int = Field(
        default=16 * 1024, ge=1024, description="Largest body of POST /api/connect/complete"
    )
    public_api_docs: bool = Field(
        default=False, description="Serve /openapi.json, /docs and /redoc without a token"
    )
    allow_live_connect: bool = Field(
        default=False, description="Let the connect page's caller choose api_mode=live"
    )
    max_header_bytes: int = Field(
        default=32 * 1024, ge=4096, description="Larger request heads are answered 431"
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A connection must send its request head within this"
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Addresses of TLS proxies whose X-Forwarded-For/-Proto are trusted "
        "(comma-separated; empty: none, the peer address is the client)",
    )
    metrics_require_token: bool = Field(
        default=False, description="Require an API token for /metrics"
    )
    ready_max_inbox_lag_seconds: float = Field(
        default=300.0, description="/readyz fails when an unprocessed event is older"
    )
    ready_max_heartbeat_age_seconds: float = Field(
        default=60.0, description="/readyz fails when background processing is quieter"
    )

    log_json: bool = False
    log_level: str = "INFO"

    @field_validator(
        "test_webhook_secrets", "live_webhook_secrets", "download_allowed_hosts", mode="before"
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ehi-bridge.sqlite3').resolve()}"

    @cached_property
    def resolved_dbos_database_url(self) -> str:
        if self.dbos_database_url:
            return self.dbos_database_url
        url = self.resolved_database_url
        if url.startswith("sqlite"):
            return url.rsplit(".", 1)[0] + ".dbos.sqlite3"
        return url

    def webhook_secrets(self, mode: Mode) -> list[str]:
        secrets = self.test_webhook_secrets if mode == "test" else self.live_webhook_secrets
        return [s.get_secret_value() for s in secrets]

    def credentials(self, mode: Mode) -> tuple[str, str]:
        if mode == "test":
            return self.test_public_id, self.test_private_key.get_secret_value()
        return self.live_public_id, self.live_private_key.get_secret_value()

    def allowed_download_hosts(self) -> set[str]:
        from urllib.parse import urlsplit

        hosts = {h.lower() for h in self.download_allowed_hosts}
        api_host = urlsplit(self.fasten_api_url).hostname
        if api_host:
            hosts.add(api_host.lower())
        return hosts

    def export_deadline_minutes_for(self, platform_type: str | None) -> float:
        return self.export_deadline_minutes_by_platform.get(
            (platform_type or "").lower(), self.export_deadline_minutes
        )
