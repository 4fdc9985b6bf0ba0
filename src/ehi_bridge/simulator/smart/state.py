"""The sandbox's memory: clients, pending consents, codes, grants, tokens, faults and stats.
Thread-safe (one lock): the control API and tests call it from other threads.

Tokens and codes are kept only as SHA-256 digests; the values leave through the token answer.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ehi_bridge.simulator.smart.config import PROFILES, SmartConfig

FAULT_KINDS = (
    "rate_limit",
    "expire_tokens",
    "invalid_grant",
    "forbidden_type",
    "malformed_json",
    "paging_loop",
    "slow",
)
# How many answers a fault changes when ``times`` is not given (None: until cleared).
DEFAULT_TIMES: dict[str, int | None] = {
    "rate_limit": 1,
    "invalid_grant": 1,
    "malformed_json": 1,
    "forbidden_type": None,
    "paging_loop": None,
    "slow": None,
}
PUBLIC_CLIENT = "ehi-public"
CONFIDENTIAL_CLIENT = "ehi-confidential"
CONFIDENTIAL_SECRET = "sandbox-secret"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(slots=True)
class Client:
    client_id: str
    profile: str  # or "*"
    auth_method: str
    client_secret: str | None = None
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    redirect_uris: list[str] = field(default_factory=list)  # empty: any loopback URI


@dataclass(slots=True)
class PendingAuthorization:
    profile: str
    client_id: str
    redirect_uri: str
    scopes: list[str]
    state: str | None
    code_challenge: str
    response_mode: str
    expires_at: float


@dataclass(slots=True)
class AuthCode:
    profile: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    patient_id: str
    scopes: list[str]
    expires_at: float


@dataclass(slots=True)
class Grant:
    grant_id: str
    profile: str
    client_id: str
    patient_id: str
    scopes: list[str]
    revoked: bool = False

    @property
    def offline(self) -> bool:
        return "offline_access" in self.scopes or "online_access" in self.scopes


@dataclass(slots=True)
class AccessToken:
    grant_id: str
    expires_at: float


@dataclass(slots=True)
class Fault:
    kind: str
    profile: str | None = None
    resource_type: str | None = None
    remaining: int | None = None  # None: until cleared
    retry_after: int = 1
    delay_ms: int = 0

    def applies(self, profile: str, resource_type: str | None) -> bool:
        if self.profile is not None and self.profile != profile:
            return False
        return self.resource_type is None or self.resource_type == resource_type


@dataclass(slots=True)
class Stats:
    token_requests: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    by_path_kind: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight_by_host: dict[str, int] = field(default_factory=dict)


class SmartState:
    def __init__(self, config: SmartConfig, now: Callable[[], float] = time.time) -> None:
        self.config = config
        self.now = now
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], Client] = {}
        self._pending: dict[str, PendingAuthorization] = {}
        self._codes: dict[str, AuthCode] = {}
        self._grants: dict[str, Grant] = {}
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, str] = {}  # digest → grant id
        self._jti: dict[tuple[str, str], float] = {}  # (client, jti) → expiry
        self._faults: list[Fault] = []
        self._stats = Stats()
        self.access_token_ttl_seconds = config.access_token_ttl_seconds
        self.fixed_patient_id = config.fixed_patient_id
        self.register_client(Client(PUBLIC_CLIENT, "*", "none"))
        self.register_client(
            Client(CONFIDENTIAL_CLIENT, "*", "client_secret_basic", CONFIDENTIAL_SECRET)
        )

    # --- clients ----------------------------------------------------------------------------

    def register_client(self, client: Client) -> None:
        with self._lock:
            self._clients[(client.profile, client.client_id)] = client

    def client(self, profile: str, client_id: str) -> Client | None:
        with self._lock:
            return self._clients.get((profile, client_id)) or self._clients.get(("*", client_id))

    # --- authorization ----------------------------------------------------------------------

    def add_pending(self, pending: PendingAuthorization) -> str:
        request_id = secrets.token_urlsafe(16)
        with self._lock:
            now = self.now()
            self._pending = {k: v for k, v in self._pending.items() if v.expires_at > now}
            self._pending[request_id] = pending
        return request_id

    def take_pending(self, request_id: str) -> PendingAuthorization | None:
        with self._lock:
            pending = self._pending.pop(request_id, None)
        if pending is None or pending.expires_at <= self.now():
            return None
        return pending

    def issue_code(self, pending: PendingAuthorization, patient_id: str, scopes: list[str]) -> str:
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[_digest(code)] = AuthCode(
                profile=pending.profile,
                client_id=pending.client_id,
                redirect_uri=pending.redirect_uri,
                code_challenge=pending.code_challenge,
                patient_id=patient_id,
                scopes=scopes,
                expires_at=self.now() + self.config.code_ttl_seconds,
            )
        return code

    def redeem_code(self, code: str) -> AuthCode | None:
        """The code's binding, once: a code is gone after its first use, even a failed one."""
        with self._lock:
            found = self._codes.pop(_digest(code), None)
        if found is None or found.expires_at <= self.now():
            return None
        return found

    # --- grants and tokens ------------------------------------------------------------------

    def new_grant(self, code: AuthCode) -> Grant:
        grant = Grant(
            grant_id=secrets.token_hex(8),
            profile=code.profile,
            client_id=code.client_id,
            patient_id=code.patient_id,
            scopes=list(code.scopes),
        )
        with self._lock:
            self._grants[grant.grant_id] = grant
        return grant

    def issue_tokens(self, grant: Grant) -> tuple[str, str | None, float]:
        """(access token, refresh token or None, expires_in seconds)."""
        access = secrets.token_urlsafe(32)
        refresh = secrets.token_urlsafe(32) if grant.offline else None
        ttl = self.access_token_ttl_seconds
        with self._lock:
            self._access[_digest(access)] = AccessToken(grant.grant_id, self.now() + ttl)
            if refresh is not None:
                self._refresh[_digest(refresh)] = grant.grant_id
        return access, refresh, ttl

    def use_refresh(self, refresh: str) -> Grant | None:
        """The live grant of a refresh token, consuming the token (rotation)."""
        with self._lock:
            grant_id = self._refresh.pop(_digest(refresh), None)
            grant = self._grants.get(grant_id) if grant_id else None
        if grant is None or grant.revoked:
            return None
        return grant

    def revoke_grant(self, grant_id: str) -> None:
        with self._lock:
            grant = self._grants.get(grant_id)
            if grant is not None:
                grant.revoked = True
            self._refresh = {k: v for k, v in self._refresh.items() if v != grant_id}

    def access(self, token: str) -> tuple[Grant | None, str]:
        """(the grant, "") for a live access token, else (None, why)."""
        with self._lock:
            found = self._access.get(_digest(token))
            grant = self._grants.get(found.grant_id) if found else None
        if found is None or grant is None:
            return None, "unknown access token"
        if grant.revoked:
            return None, "the grant was revoked"
        if found.expires_at <= self.now():
            return None, "the access token expired"
        return grant, ""

    def expire_access_tokens(self) -> int:
        with self._lock:
            now = self.now()
            live = [t for t in self._access.values() if t.expires_at > now]
            for token in live:
                token.expires_at = now
        return len(live)

    def remember_jti(self, client_id: str, jti: str, exp: float) -> bool:
        """False when this client used ``jti`` before (a replayed assertion)."""
        with self._lock:
            now = self.now()
            self._jti = {
                k: v for k, v in self._jti.items() if v + self.config.assertion_leeway_seconds > now
            }
            if (client_id, jti) in self._jti:
                return False
            self._jti[(client_id, jti)] = exp
            return True

    # --- faults -----------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "kind": f.kind,
                    "profile": f.profile,
                    "resource_type": f.resource_type,
                    "remaining": f.remaining,
                }
                for f in self._faults
            ]

    def take_fault(self, kind: str, profile: str, resource_type: str | None) -> Fault | None:
        """The first fault of ``kind`` that applies; counts one use of it."""
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.applies(profile, resource_type):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    # --- stats ------------------------------------------------------------------------------

    def enter(self, host: str, kind: str) -> None:
        with self._lock:
            stats = self._stats
            stats.requests += 1
            stats.by_path_kind[kind] = stats.by_path_kind.get(kind, 0) + 1
            now_in = stats.in_flight.get(host, 0) + 1
            stats.in_flight[host] = now_in
            if now_in > stats.max_in_flight_by_host.get(host, 0):
                stats.max_in_flight_by_host[host] = now_in

    def leave(self, host: str) -> None:
        with self._lock:
            self._stats.in_flight[host] = max(0, self._stats.in_flight.get(host, 0) - 1)

    def count_token_request(self, profile: str) -> None:
        with self._lock:
            counts = self._stats.token_requests
            counts[profile] = counts.get(profile, 0) + 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            s = self._stats
            return {
                "token_requests": {p: s.token_requests.get(p, 0) for p in PROFILES},
                "requests": s.requests,
                "max_in_flight": max(s.max_in_flight_by_host.values(), default=0),
                "max_in_flight_by_host": dict(s.max_in_flight_by_host),
                "in_flight": sum(s.in_flight.values()),
                "by_path_kind": dict(sorted(s.by_path_kind.items())),
            }

    def reset_stats(self) -> None:
        with self._lock:
            in_flight = self._stats.in_flight
            self._stats = Stats(in_flight=in_flight)
