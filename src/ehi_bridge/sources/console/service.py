"""The developer console's work: a source to try (a shipped platform, a sandbox profile, or
a custom registration), its OAuth flow, FHIR GETs with the token, a full sync into an NDJSON
file, and saving a working registration as a platform definition.

Tokens, secrets and PKCE verifiers live only in this process's memory (never logged, never
written): the console is a local tool. The OAuth calls and the sync are the sources
package's own (``oauth.py``, ``service.pull`` — what ``ehi-bridge sources sync`` runs).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import structlog

from ehi_bridge.config import Settings
from ehi_bridge.sources import oauth
from ehi_bridge.sources import service as sources
from ehi_bridge.sources.crypto import SigningKey, derived_signing_key, signing_key_from_setting
from ehi_bridge.sources.definitions import (
    Platform,
    TokenAuth,
    definitions,
    read_user_platforms,
    sandbox_base_url,
)
from ehi_bridge.sources.fetch import ACCEPT, TIMEOUT, FailureReason, HostLimiter, SyncError
from ehi_bridge.sources.sync import Spool

log = structlog.get_logger(__name__)

DEFAULT_SCOPES = "openid fhirUser profile patient/*.read offline_access"
PENDING_LIFETIME_SECONDS = 30 * 60
MAX_SHOWN_BYTES = 2 * 1024 * 1024
ResponseMode = Literal["query", "fragment"]


class ConsoleError(ValueError):
    """The form or the request is not usable (shown to the developer as is)."""


@dataclass(frozen=True)
class SourceSpec:
    """What the developer chose or typed: everything the OAuth flow and the sync need."""

    source_type: str
    fhir_base_url: str
    authorize_endpoint: str | None
    token_endpoint: str | None
    token_auth: TokenAuth
    response_mode: ResponseMode
    client_id: str
    scopes: tuple[str, ...]
    confidential: bool
    quirks: str  # the shipped platform whose search quirks apply
    custom: bool
    client_secret: str | None = field(default=None, repr=False)
    requests_per_second: float | None = None  # None: the quirks platform's pace

    def platform(self) -> Platform:
        """A platform definition for this source (the quirks platform's searches)."""
        try:
            base = definitions().platform(self.quirks)
        except KeyError:
            raise ConsoleError(f"unknown platform {self.quirks!r}") from None
        if not self.custom:
            return base
        return base.model_copy(
            update={
                "id": self.source_type,
                "name": self.source_type,
                "discovery": not (self.authorize_endpoint and self.token_endpoint),
                "authorize_endpoint": self.authorize_endpoint,
                "token_endpoint": self.token_endpoint,
                "scopes": self.scopes,
                "confidential": self.confidential,
                "token_auth": self.token_auth,
                "response_mode": self.response_mode,
                "sandbox_profile": None,
                "default_client_id": self.client_id,
                "requests_per_second": base.requests_per_second
                if self.requests_per_second is None
                else self.requests_per_second,
            }
        )


@dataclass
class SyncJob:
    path: Path
    started: float
    count: int = 0
    done: bool = False
    error: str | None = None
    by_type: dict[str, int] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    total: int = 0
    seconds: float = 0.0


@dataclass
class Pending:
    spec: SourceSpec
    endpoints: oauth.Endpoints
    verifier: str = field(repr=False)
    redirect_uri: str
    created: float


@dataclass
class Session:
    """One completed authorization (tokens in memory only)."""

    id: str
    spec: SourceSpec
    endpoints: oauth.Endpoints
    code: str = field(repr=False)
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: int | None
    scope: str | None
    patient: str | None
    created: float
    job: SyncJob | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __repr__(self) -> str:
        return f"Session({self.id!r}, {self.spec.source_type!r})"


def mask(value: str | None) -> str:
    if not value:
        return ""
    return value[:4] + "…" + "•" * 8 if len(value) > 12 else "•" * 8


def split_scopes(text: str) -> tuple[str, ...]:
    return tuple(s for s in text.replace(",", " ").split() if s)


def _http_url(value: str, what: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConsoleError(f"{what} must be an http(s) URL")
    return value.rstrip("/")


class Console:
    """The console's state: pending authorizations and completed sessions, in memory."""

    def __init__(
        self,
        settings: Settings,
        *,
        sandbox_url: str = "",
        out_dir: Path | None = None,
        definitions_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.sandbox_url = (sandbox_url or settings.smart_sandbox_url).rstrip("/")
        self.out_dir = out_dir or Path(tempfile.gettempdir()) / "ehi-bridge-console"
        self.definitions_file = definitions_file or settings.sources_definitions_file
        self.signing_key = self._signing_key(settings)
        self.pending: dict[str, Pending] = {}
        self.sessions: dict[str, Session] = {}
        self.limiter = HostLimiter(settings.source_max_in_flight_per_host)
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _signing_key(settings: Settings) -> SigningKey:
        """The configured key, else one made for this run (its JWKS is served here)."""
        if settings.source_signing_key is not None:
            return signing_key_from_setting(settings.source_signing_key.get_secret_value())
        return derived_signing_key(secrets.token_hex(32))

    # --- choosing a source ------------------------------------------------------------

    def platforms(self) -> list[Platform]:
        return [p for p in definitions().platforms if p.sandbox_profile is None]

    def sandbox_profiles(self) -> list[tuple[Platform, str]]:
        """The sandbox platforms with their FHIR base on the configured sandbox."""
        if not self.sandbox_url:
            return []
        found = []
        for p in definitions().platforms:
            base = sandbox_base_url(self.sandbox_url, p)
            if base:
                found.append((p, base))
        return found

    def spec_for_platform(
        self, platform_id: str, fhir_base_url: str, client_id: str, client_secret: str
    ) -> SourceSpec:
        """A shipped platform (or a sandbox profile) as a source to try."""
        try:
            platform = definitions().platform(platform_id)
        except KeyError:
            raise ConsoleError(f"unknown platform {platform_id!r}") from None
        base = fhir_base_url.strip() or sandbox_base_url(self.sandbox_url, platform) or ""
        if not base:
            raise ConsoleError("a FHIR base URL is needed for this platform")
        client = (
            client_id.strip()
            or self.settings.source_client_ids.get(platform.id)
            or platform.default_client_id
        )
        if not client:
            raise ConsoleError(f"a client id is needed for platform {platform.id!r}")
        secret = client_secret or None
        if secret is None and platform.id in self.settings.source_client_secrets:
            secret = self.settings.source_client_secrets[platform.id].get_secret_value()
        return SourceSpec(
            source_type=platform.id,
            fhir_base_url=_http_url(base, "the FHIR base URL"),
            authorize_endpoint=platform.endpoint(platform.authorize_endpoint, base),
            token_endpoint=platform.endpoint(platform.token_endpoint, base),
            token_auth=platform.token_auth,
            response_mode=platform.response_mode or "query",
            client_id=client,
            scopes=platform.scopes,
            confidential=platform.confidential,
            quirks=platform.id,
            custom=False,
            client_secret=secret,
        )

    def custom_spec(self, form: dict[str, str]) -> SourceSpec:
        """The "Define Custom Source" form as a source to try."""
        source_type = form.get("source_type", "").strip().lower()
        if not source_type or not all(c.isalnum() or c == "-" for c in source_type):
            raise ConsoleError("the source type must be a short name (letters, digits, -)")
        if len(source_type) > 64:
            raise ConsoleError("the source type is too long")
        token_auth = form.get("token_auth", "none")
        if token_auth not in ("none", "client_secret_basic", "private_key_jwt"):
            raise ConsoleError("unknown token endpoint auth method")
        mode = form.get("response_mode", "query")
        if mode not in ("query", "fragment"):
            raise ConsoleError("the response mode is fragment or query")
        client_id = form.get("client_id", "").strip()
        if not client_id:
            raise ConsoleError("a client id is needed")
        confidential = form.get("confidential") in ("on", "true", "1", "yes")
        secret = form.get("client_secret") or None
        if token_auth == "client_secret_basic" and not secret:
            raise ConsoleError("client_secret_basic needs the client secret")
        authorize = form.get("authorization_endpoint", "").strip()
        token = form.get("token_endpoint", "").strip()
        scopes = split_scopes(form.get("scopes", "") or DEFAULT_SCOPES)
        quirks = form.get("quirks", "generic") or "generic"
        pace_text = form.get("requests_per_second", "").strip()
        try:
            pace = float(pace_text) if pace_text else None
        except ValueError:
            raise ConsoleError("requests per second must be a number") from None
        if pace is not None and not 0 <= pace <= 1000:
            raise ConsoleError("requests per second must be between 0 and 1000")
        try:
            definitions().platform(quirks)
        except KeyError:
            raise ConsoleError(f"unknown platform {quirks!r}") from None
        return SourceSpec(
            source_type=source_type,
            fhir_base_url=_http_url(form.get("fhir_base_url", ""), "the FHIR base URL"),
            authorize_endpoint=_http_url(authorize, "the authorization endpoint")
            if authorize
            else None,
            token_endpoint=_http_url(token, "the token endpoint") if token else None,
            token_auth=token_auth,  # type: ignore[arg-type]
            response_mode=mode,  # type: ignore[arg-type]
            client_id=client_id,
            scopes=scopes,
            confidential=confidential or token_auth != "none",
            quirks=quirks,
            custom=True,
            client_secret=secret,
            requests_per_second=pace,
        )

    def _credentials(self, spec: SourceSpec) -> oauth.ClientCredentials:
        return oauth.ClientCredentials(
            client_id=spec.client_id,
            token_auth=spec.token_auth,
            secret=spec.client_secret,
            signing_key=self.signing_key,
        )

    # --- OAuth --------------------------------------------------------------------------

    def begin(self, spec: SourceSpec, redirect_uri: str) -> str:
        """The authorize URL (PKCE S256, ``aud``, a fresh ``state``, the response mode)."""
        platform = spec.platform()
        try:
            endpoints = oauth.discover(spec.fhir_base_url, platform)
        except oauth.DiscoveryFailure as exc:
            raise ConsoleError(str(exc)) from None
        state = oauth.new_state()
        verifier = oauth.new_code_verifier()
        url = oauth.authorize_url(
            platform,
            self._credentials(spec),
            endpoints,
            spec.fhir_base_url,
            redirect_uri,
            state,
            verifier,
        )
        if spec.response_mode == "fragment":
            url += ("&" if "?" in url else "?") + "response_mode=fragment"
        now = time.monotonic()
        with self._lock:
            for old, item in list(self.pending.items()):
                if now - item.created > PENDING_LIFETIME_SECONDS:
                    del self.pending[old]
            self.pending[state] = Pending(spec, endpoints, verifier, redirect_uri, now)
        log.info("console authorization started", source=spec.source_type)
        return url

    def complete(self, state: str, code: str) -> Session:
        """Exchange the code; the pending authorization is spent first (one use)."""
        with self._lock:
            pending = self.pending.pop(state, None)
        if pending is None or time.monotonic() - pending.created > PENDING_LIFETIME_SECONDS:
            raise ConsoleError("unknown or already used state")
        try:
            answer = oauth.exchange_code(
                self._credentials(pending.spec),
                pending.endpoints.token,
                code,
                pending.redirect_uri,
                pending.verifier,
            )
        except oauth.OAuthFailure as exc:
            raise ConsoleError(f"the token endpoint refused the code: {exc.error}") from None
        session = Session(
            id=secrets.token_urlsafe(16),
            spec=pending.spec,
            endpoints=pending.endpoints,
            code=code,
            access_token=answer.access_token,
            refresh_token=answer.refresh_token,
            expires_in=answer.expires_in,
            scope=answer.scope,
            patient=answer.patient,
            created=time.monotonic(),
        )
        with self._lock:
            self.sessions[session.id] = session
        log.info("console authorized", source=pending.spec.source_type)
        return session

    def session(self, session_id: str) -> Session:
        with self._lock:
            found = self.sessions.get(session_id)
        if found is None:
            raise KeyError(session_id)
        return found

    # --- FHIR ---------------------------------------------------------------------------

    def _refresh(self, session: Session, stale: str) -> str:
        with session.lock:
            if session.access_token != stale:
                return session.access_token
            if not session.refresh_token:
                raise SyncError(FailureReason.UNAUTHORIZED, "the token was refused")
            try:
                answer = oauth.refresh(
                    self._credentials(session.spec),
                    session.endpoints.token,
                    session.refresh_token,
                )
            except oauth.OAuthFailure as exc:
                raise SyncError(FailureReason.REAUTH_REQUIRED, exc.error) from None
            session.access_token = answer.access_token
            session.refresh_token = answer.refresh_token or session.refresh_token
            session.expires_in = answer.expires_in
            return session.access_token

    async def get(self, session: Session, path_or_url: str) -> tuple[int, str, bytes]:
        """One FHIR GET on the source's base (never another host: the token stays there);
        status, content type and the body as received."""
        base = session.spec.fhir_base_url
        target = path_or_url.strip()
        url = (
            target if target.startswith(("http://", "https://")) else f"{base}/{target.lstrip('/')}"
        )
        if urlsplit(url).netloc.lower() != urlsplit(base).netloc.lower():
            raise ConsoleError("only URLs on the source's FHIR server can be read")
        platform = session.spec.platform()
        headers = sources.client_headers(platform, session.spec.client_id)
        async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as http:
            token = session.access_token
            for _ in range(2):
                response = await http.get(
                    url, headers={**headers, "Accept": ACCEPT, "Authorization": f"Bearer {token}"}
                )
                if response.status_code != 401 or not session.refresh_token:
                    break
                try:
                    token = await asyncio.to_thread(self._refresh, session, token)
                except SyncError:
                    break
        body = response.content[:MAX_SHOWN_BYTES]
        return response.status_code, response.headers.get("content-type", ""), body

    # --- sync all -----------------------------------------------------------------------

    def start_sync(self, session: Session) -> SyncJob:
        """Start "sync all" into an NDJSON file (the same pull as ``sources sync``)."""
        if session.patient is None:
            raise ConsoleError("the token answer named no patient")
        with session.lock:
            if session.job is not None and not session.job.done:
                return session.job
            stamp = time.strftime("%Y%m%dT%H%M%S")
            path = self.out_dir / f"{session.spec.source_type}-{stamp}-{session.id[:6]}.ndjson"
            job = session.job = SyncJob(path=path, started=time.monotonic())
        task = asyncio.get_running_loop().create_task(self._sync(session, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _sync(self, session: Session, job: SyncJob) -> None:
        console = self

        class Tokens:
            async def token(self) -> str:
                return session.access_token

            async def rejected(self, token: str) -> str:
                return await asyncio.to_thread(console._refresh, session, token)

        def progress(count: int) -> None:
            job.count = count

        assert session.patient is not None
        target = sources.SyncTarget(
            0,
            "",
            session.spec.platform(),
            session.spec.fhir_base_url,
            session.patient,
            session.spec.client_id,
        )
        try:
            with Spool(job.path, "ndjson") as spool:
                result = await sources.pull(
                    self.settings, Tokens(), target, spool, self.limiter, progress
                )
        except SyncError as exc:
            job.error = exc.reason
        except Exception as exc:  # shown to the developer; the console keeps running
            job.error = type(exc).__name__
        else:
            job.total = result.total
            job.count = result.total
            job.by_type = dict(sorted(result.by_type.items()))
            job.problems = dict(result.problems)
        job.seconds = time.monotonic() - job.started
        job.done = True
        log.info("console sync finished", source=session.spec.source_type, error=job.error)

    # --- saving -------------------------------------------------------------------------

    def save_definition(self, session: Session) -> tuple[Path, Platform]:
        """Write the source as a platform definition into the user definitions file (no
        secret: the client secret belongs in ``EHI_SOURCE_CLIENT_SECRETS``)."""
        if self.definitions_file is None:
            raise ConsoleError(
                "no definitions file (--definitions-file or SOURCES_DEFINITIONS_FILE)"
            )
        platform = session.spec.platform()
        platform = platform.model_copy(update={"name": platform.name, "sandbox_profile": None})
        path = Path(self.definitions_file)
        with self._lock:
            existing = [p for p in read_user_platforms(path) if p.id != platform.id]
            data = [p.model_dump(mode="json", exclude_none=True) for p in existing]
            data.append(platform.model_dump(mode="json", exclude_none=True))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        definitions.cache_clear()
        log.info("console saved a platform definition", platform=platform.id)
        return path, platform

    def token_view(self, session: Session) -> dict[str, Any]:
        """The token answer as shown (tokens masked)."""
        return {
            "access_token": mask(session.access_token),
            "token_type": "Bearer",
            "expires_in": session.expires_in,
            "scope": session.scope,
            "patient": session.patient,
            "refresh_token": mask(session.refresh_token) if session.refresh_token else None,
        }
