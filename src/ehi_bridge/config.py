"""Settings, read from environment variables (prefix ``EHI_``) and an optional ``.env`` file."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

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
        env_prefix="EHI_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        use_attribute_docstrings=True,
    )

    data_dir: Path = Path("./data")
    """Folder of the SQLite database files (app and DBOS) and of downloads in progress."""
    database_url: str | None = None
    """`sqlite:///…` or `postgresql://…` (psycopg 3); unset: SQLite `ehi-bridge.sqlite3` in
    `DATA_DIR`. The URL alone selects the backend.
    """
    dbos_database_url: str | None = None
    """DBOS's system database (durable workflow state). Unset: on SQLite, a second file beside
    the app database (`….dbos.sqlite3`); on PostgreSQL, the app database itself.
    """
    executor_id: str = "local"
    """This process's DBOS executor id: stable across restarts of the same process and unique
    among processes sharing a database, so a restarted process resumes exactly its own
    unfinished workflows (docs/operations.md shows how to derive one per process).
    """
    app_version: str = ""
    """DBOS application version. Unset: the package version, so workflows started by one
    release are recovered only by the same release; pin it to recover across an upgrade.
    """

    test_webhook_secrets: Annotated[list[SecretStr], NoDecode] = []
    """Comma-separated `whsec_…` secrets of Fasten's test-mode webhooks; all verify, so list the
    new one beside the old during a rotation. Unset: test-mode deliveries answer 503.
    """
    live_webhook_secrets: Annotated[list[SecretStr], NoDecode] = []
    """As `TEST_WEBHOOK_SECRETS`, for live mode."""
    test_public_id: str = ""
    """Fasten test-mode public id (`public_test_…`), for API calls (export requests, status polls).
    """
    test_private_key: SecretStr = SecretStr("")
    """Fasten test-mode private key (`private_test_…`). Read at start-up: a new key takes a restart
    of every process.
    """
    live_public_id: str = ""
    """Fasten live-mode public id."""
    live_private_key: SecretStr = SecretStr("")
    """Fasten live-mode private key. Read at start-up: a new key takes a restart of every process.
    """
    fasten_api_url: str = "https://api.connect.fastenhealth.com/v1"
    """Fasten Connect's API (the simulator's URL in development)."""
    fasten_auth_scheme: Literal["basic", "bearer"] = "basic"
    """How API calls authenticate: HTTP Basic with the public id and private key, or a bearer
    token.
    """
    download_allowed_hosts: Annotated[list[str], NoDecode] = []
    """Comma-separated host names an export's download link may point at, besides
    `FASTEN_API_URL`'s host (the storage host Fasten redirects to).
    """

    webhook_max_body_bytes: int = 1024 * 1024
    """Largest webhook body accepted, in bytes; a larger delivery answers 413."""
    webhook_tolerance_seconds: int = 300
    """How far a webhook's signed timestamp may be from now (replay protection)."""
    webhook_max_json_depth: int = Field(default=32, ge=2, le=200)
    """Deepest nesting of a webhook body's JSON; a deeper delivery answers 400."""
    signature_failure_alert_threshold: int = 20
    """Alert when this many webhook signatures fail within `SIGNATURE_FAILURE_ALERT_WINDOW_SECONDS`
    (a wrong or rotated secret).
    """
    signature_failure_alert_window_seconds: float = 60.0
    """The window of `SIGNATURE_FAILURE_ALERT_THRESHOLD`."""
    event_max_attempts: int = 5
    """Attempts to apply an event before it is parked for replay from the dashboard or API."""
    event_retry_interval_seconds: float = 1.0
    """First delay between attempts; it doubles after each failure."""
    apply_batch_size: int = Field(default=256, ge=1, le=5000)
    """Most inbox events applied in one transaction (on SQLite the applier steers its batches
    to keep each write transaction near 8 ms, up to this size)."""

    apply_share_while_receiving: float | None = Field(default=None, gt=0, le=1)
    """While webhook deliveries arrive fast (over 500 a second), the applier writes at most
    this share of the time, pausing between batches: receiving comes first, the backlog still
    drains, at full speed again once the burst is over. Unset: 0.16 on SQLite (a share of its
    one write lock, which every delivery's commit waits for), 0.5 on PostgreSQL (a share of
    the CPU the applier's transactions take)."""

    background_process: bool = True
    """`serve` runs its background work in a child process of lower CPU priority (false: in the
    web process)."""
    fasten_requests_per_second: float = Field(default=20.0, ge=0)
    """Pace of requests to Fasten's API from one process's background work (0: no pace), so a
    large onboarding does not hammer Fasten."""
    fasten_request_concurrency: int = Field(default=8, ge=1)
    """Requests to Fasten's API in flight at once, per process."""
    download_concurrency: int = Field(default=8, ge=1)
    """Export downloads in flight at once, per process."""
    ingest_concurrency: int = Field(default=2, ge=1)
    """Export ingests running at once, per process."""
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    """How often passed export deadlines and stalled exports are looked for."""
    export_stall_minutes: float = Field(default=10, gt=0)
    """An export our side has not moved for this long (not yet asked of Fasten, downloading,
    ingesting) is alerted and counted in `/readyz` and `/metrics`."""

    auto_request_export: bool = True
    """Request an export as soon as a `patient.connection_success` arrives."""
    export_deadline_minutes: float = 30
    """An export not complete after this long is polled for its status, then marked `timed_out`
    with an alert.
    """
    export_deadline_minutes_by_platform: dict[str, float] = {"epic": 60}
    """Per-platform deadlines (JSON object of platform type to minutes) overriding
    `EXPORT_DEADLINE_MINUTES`.
    """
    export_file_lifetime_hours: int = 24
    """How long Fasten keeps an export's download link valid after it completes."""
    rerequest_expired_exports: bool = True
    """Request a fresh export when the download link of a completed one has expired before it was
    downloaded.
    """
    revoked_records: Literal["keep", "purge"] = "keep"
    """What happens to stored records when a patient revokes the authorization: keep them, or purge
    them.
    """
    quarantine_max_bytes: int = Field(default=1024 * 1024, ge=0)
    """Bytes of a rejected line kept in the quarantine; longer lines are cut and marked
    `truncated`."""

    smart_sandbox_url: str = ""
    """Base URL of the simulator's SMART sandbox (`ehi-bridge simulator smart`); the
    `sandbox-*` platforms' FHIR bases are `{SMART_SANDBOX_URL}/{profile}/fhir`."""
    sources_catalog_file: Path | None = None
    """A JSON file listing more institutions (`[{"id", "name", "platform", "fhir_base_url"}]`),
    added to the shipped catalog of SMART sources (same id: the file's entry wins)."""
    sources_definitions_file: Path | None = None
    """A JSON file listing more SMART platform definitions (same fields as the shipped
    ones; same id: the file's entry wins). The developer console (`ehi-bridge sources
    console`) saves working registrations here."""
    source_client_ids: dict[str, str] = {}
    """This installation's client id registered with each SMART platform (JSON object of
    platform id to client id, e.g. `{"epic": "abc"}`)."""
    source_client_secrets: dict[str, SecretStr] = {}
    """Client secrets of the platforms that use `client_secret_basic` (JSON object of platform
    id to secret)."""
    source_signing_key: SecretStr | None = None
    """The private key that signs `private_key_jwt` client assertions (PEM, or a JWK as JSON;
    RSA signs RS384, EC P-384 ES384). Its public half is served at `/.well-known/jwks.json`.
    Unset: an EC P-384 key derived from a secret generated once per installation."""
    source_token_key: SecretStr | None = None
    """Encrypts SMART access and refresh tokens at rest (AES-GCM; any long random string).
    Unset: a secret generated once per installation and stored in the database. Changing it
    makes stored tokens unreadable (the connections must authorize again)."""
    source_redirect_url: str | None = None
    """The OAuth redirect URI registered with the platforms. Unset:
    `{PUBLIC_BASE_URL}/sources/callback`."""
    source_resync_hours: float = Field(default=0, ge=0)
    """Sync each authorized SMART connection again this many hours after its last sync
    (0: only on request)."""
    source_max_in_flight_per_host: int = Field(default=5, ge=1, le=5)
    """FHIR requests in flight at once to one EHR host, per process."""
    source_reference_rounds: int = Field(default=10, ge=0, le=10)
    """Rounds of fetching referenced resources not yet seen (Practitioner, Medication …)."""
    source_max_pages: int = Field(default=500, ge=1)
    """Most pages read from one search; more is treated as a paging loop."""
    source_max_retries: int = Field(default=6, ge=0)
    """Retries of one FHIR request answered 429/503 or failing on the network."""
    source_max_retry_after_seconds: float = Field(default=120.0, gt=0)
    """Longest wait honoured from `Retry-After`/`X-RateLimit-Reset`; longer asks fail the sync
    as `rate_limited`."""

    alert_slack_webhook_url: SecretStr | None = None
    """Slack incoming-webhook URL for alerts (every alert is also logged)."""
    alert_http_url: str | None = None
    """An HTTP endpoint that receives alerts as signed JSON POSTs."""
    alert_http_secret: SecretStr | None = None
    """The secret that signs alerts sent to `ALERT_HTTP_URL` (Standard Webhooks scheme)."""
    downstream_url: str | None = None
    """Your application's endpoint for signed `records.ingested` notifications."""
    downstream_secret: SecretStr | None = None
    """The secret that signs notifications sent to `DOWNSTREAM_URL`."""

    session_secret: Annotated[list[SecretStr], NoDecode] = []
    """Signs dashboard sessions; comma-separated to rotate: the first signs, all verify (add
    the new secret in front, drop the old one once sessions signed with it have expired,
    12 hours). Unset: a secret generated once and stored in the database, shared by every
    process and host on that database.
    """
    connect_link_secret: Annotated[list[SecretStr], NoDecode] = []
    """Signs the connect page's links (`/connect?token=…`); comma-separated to rotate: the
    first signs, all verify (drop the old one once its links have expired). Unset: connect
    links cannot be made.
    """
    public_base_url: str = "http://127.0.0.1:8000"
    """The URL patients and browsers reach this service at: connect links are built on it, and an
    `https://` value makes cookies `Secure`.
    """
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
    """Structured JSON logs (one object a line) instead of console lines."""
    log_level: str = "INFO"
    """`DEBUG`, `INFO`, `WARNING` or `ERROR`. Logs carry ids, counts and statuses, never bodies,
    URLs, secrets or records.
    """

    @field_validator(
        "test_webhook_secrets",
        "live_webhook_secrets",
        "download_allowed_hosts",
        "session_secret",
        "connect_link_secret",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        if value is None:
            return []
        if isinstance(value, SecretStr):  # one secret given in code
            return [value]
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

    def session_secrets(self) -> list[str]:
        """Configured session secrets, the signing one first (empty: use the stored one)."""
        return [s.get_secret_value() for s in self.session_secret if s.get_secret_value()]

    def connect_link_secrets(self) -> list[str]:
        """Configured connect-link secrets, the signing one first."""
        return [s.get_secret_value() for s in self.connect_link_secret if s.get_secret_value()]

    def credentials(self, mode: Mode) -> tuple[str, str]:
        if mode == "test":
            return self.test_public_id, self.test_private_key.get_secret_value()
        return self.live_public_id, self.live_private_key.get_secret_value()

    def allowed_download_hosts(self) -> set[str]:

        hosts = {h.lower() for h in self.download_allowed_hosts}
        api_host = urlsplit(self.fasten_api_url).hostname
        if api_host:
            hosts.add(api_host.lower())
        return hosts

    def source_redirect_uri(self) -> str:
        return self.source_redirect_url or f"{self.public_base_url.rstrip('/')}/sources/callback"

    def export_deadline_minutes_for(self, platform_type: str | None) -> float:
        return self.export_deadline_minutes_by_platform.get(
            (platform_type or "").lower(), self.export_deadline_minutes
        )
