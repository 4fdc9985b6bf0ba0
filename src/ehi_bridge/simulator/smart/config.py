"""SMART sandbox settings: where it listens, token lifetimes, the profiles it serves."""

from __future__ import annotations

from dataclasses import dataclass

PROFILES: tuple[str, ...] = ("generic", "epic", "cerner", "athena")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(slots=True)
class SmartConfig:
    """Everything a :class:`~ehi_bridge.simulator.smart.server.SmartSandbox` needs."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    public_host: str = "127.0.0.1"  # host name put in URLs
    url_override: str | None = None  # full base URL, e.g. behind a proxy
    access_token_ttl_seconds: float = 300.0
    code_ttl_seconds: float = 60.0
    authorize_request_ttl_seconds: float = 600.0
    max_assertion_lifetime_seconds: float = 300.0
    assertion_leeway_seconds: float = 30.0
    jwks_fetch_timeout_seconds: float = 5.0
    default_page_size: int = DEFAULT_PAGE_SIZE
    fixed_patient_id: str | None = None  # consent offers only this patient
