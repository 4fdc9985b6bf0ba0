"""Simulator settings: credentials and webhook registration per mode, timings, hosts."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field

from ehi_bridge.config import MODES, Mode, Settings

DEFAULT_BRANDS: tuple[tuple[str, str, str], ...] = (
    # (brand name, platform_type, slug used in ids)
    ("Epic MyChart (Sandbox)", "epic", "epic"),
    ("Oracle Health / Cerner (Sandbox)", "cerner", "cerner"),
    ("athenahealth (Sandbox)", "athena", "athena"),
    ("NextGen (Sandbox)", "nextgen", "nextgen"),
    ("Medicare Blue Button (Sandbox)", "cms", "medicare"),
)


@dataclass(slots=True)
class ModeConfig:
    """One mode's key pair, webhook URL and signing secrets (the first one signs)."""

    public_id: str
    private_key: str
    webhook_secrets: list[str] = field(default_factory=list)
    webhook_url: str | None = None

    @property
    def signing_secret(self) -> str | None:
        return self.webhook_secrets[0] if self.webhook_secrets else None


@dataclass(slots=True)
class SimulatorConfig:
    """Everything a :class:`~ehi_bridge.simulator.server.SimulatorServer` needs.

    Times are seconds of *simulated* time unless said otherwise; the simulated clock is real
    time plus an offset that the control API can advance.
    """

    modes: dict[Mode, ModeConfig]
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    storage_host: str = "127.0.0.1"
    storage_port: int = 0
    # Host names put in URLs. The storage URL's host differs from the API's on purpose, as
    # with Fasten's API and its object storage.
    api_public_host: str = "127.0.0.1"
    storage_public_host: str = "localhost"
    api_url_override: str | None = None  # full base URL, e.g. behind a proxy
    storage_url_override: str | None = None
    control_token: str | None = None  # required in X-Sim-Token when set; else loopback only

    storage_key: bytes = field(default_factory=lambda: os.urandom(32))
    download_url_ttl_seconds: float = 600.0
    export_file_lifetime_seconds: float = 24 * 3600.0
    default_export_delay_seconds: float = 2.0
    slow_export_delay_seconds: dict[str, float] = field(
        default_factory=lambda: {"epic": 35 * 60.0, "": 10 * 60.0}
    )
    consent_lifetime_days: int = 365

    # Webhook delivery (real seconds): Fasten retries up to four times over about a day.
    webhook_timeout_seconds: float = 10.0
    retry_initial_delay_seconds: float = 30.0
    retry_factor: float = 15.0
    max_retries: int = 4
    tick_seconds: float = 0.05
    # Deliveries in flight at once; the rest wait their turn (a send never times out waiting
    # for a connection, which would turn a burst of 1,000 connects into 30 s retries).
    webhook_concurrency: int = 32
    # Fasten disables endpoints that keep failing (and, per Standard Webhooks, on a 410):
    # after this many deliveries in a row exhausted their retries. None: never.
    disable_after_failed_deliveries: int | None = None
    brands: tuple[tuple[str, str, str], ...] = DEFAULT_BRANDS

    def retry_delays(self) -> list[float]:
        return [
            self.retry_initial_delay_seconds * self.retry_factor**n for n in range(self.max_retries)
        ]

    def mode_for_public_id(self, public_id: str) -> Mode | None:
        for mode, cfg in self.modes.items():
            if public_id and cfg.public_id == public_id:
                return mode
        return None

    @classmethod
    def for_tests(
        cls,
        *,
        webhook_url_test: str | None = None,
        webhook_url_live: str | None = None,
        test_secret: str | None = None,
        live_secret: str | None = None,
        **overrides: object,
    ) -> SimulatorConfig:
        """Fixed test credentials and short retry timings."""

        modes: dict[Mode, ModeConfig] = {
            "test": ModeConfig(
                public_id="public_test_sim",
                private_key="private_test_sim",
                webhook_secrets=[
                    test_secret or "whsec_" + base64.b64encode(b"simulator-test-secret").decode()
                ],
                webhook_url=webhook_url_test,
            ),
            "live": ModeConfig(
                public_id="public_live_sim",
                private_key="private_live_sim",
                webhook_secrets=[
                    live_secret or "whsec_" + base64.b64encode(b"simulator-live-secret").decode()
                ],
                webhook_url=webhook_url_live,
            ),
        }
        values: dict[str, object] = {
            "modes": modes,
            "webhook_timeout_seconds": 2.0,
            "retry_initial_delay_seconds": 0.05,
            "retry_factor": 2.0,
            "default_export_delay_seconds": 0.2,
            "tick_seconds": 0.02,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_env(
        cls,
        *,
        webhook_url_test: str | None = None,
        webhook_url_live: str | None = None,
        **overrides: object,
    ) -> SimulatorConfig:
        """Keys and secrets from the service's own ``EHI_*`` settings (and ``.env``)."""

        settings = Settings()
        urls = {"test": webhook_url_test, "live": webhook_url_live}
        modes: dict[Mode, ModeConfig] = {}
        for mode in MODES:
            public_id, private_key = settings.credentials(mode)
            modes[mode] = ModeConfig(
                public_id=public_id or f"public_{mode}_simulator",
                private_key=private_key or f"private_{mode}_simulator",
                webhook_secrets=settings.webhook_secrets(mode),
                webhook_url=urls[mode],
            )
        return cls(modes=modes, **overrides)  # type: ignore[arg-type]
