"""SMART sources: authorizations, the grant's tokens (encrypted, refreshed once under a
lock, rotated durably), and the steps of a sync (an export whose ``source`` is ``smart``).

Each step is one short transaction or one remote call, safe to repeat; the durable order
lives in ``sources/tasks.py``. Alerts are written in the transaction that makes the change
they report.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from sqlalchemy.orm import Session

from ehi_bridge.alerts.service import (
    SOURCE_REAUTH_REQUIRED,
    SOURCE_SYNC_FAILED,
    SOURCE_SYNC_PARTIAL,
    raise_alert,
)
from ehi_bridge.auth.service import instance_secret
from ehi_bridge.background.limits import Pace
from ehi_bridge.config import Settings
from ehi_bridge.connections import repository as connections_repo
from ehi_bridge.connections.state import ConnectionStatus
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.db.named_lock import named_lock
from ehi_bridge.exports import repository as exports_repo
from ehi_bridge.exports.models import Export
from ehi_bridge.exports.state import ExportEvent, ExportStatus
from ehi_bridge.outbox import repository as outbox_repo
from ehi_bridge.records.ingest import ingest_file
from ehi_bridge.sources import oauth
from ehi_bridge.sources import repository as repo
from ehi_bridge.sources.crypto import (
    SigningKey,
    TokenCipher,
    TokenDecryptError,
    derived_signing_key,
    signing_key_from_setting,
)
from ehi_bridge.sources.definitions import (
    Institution,
    Platform,
    TokenAuth,
    definitions,
    load_catalog,
    sandbox_base_url,
)
from ehi_bridge.sources.fetch import (
    TIMEOUT,
    FailureReason,
    FhirClient,
    HostLimiter,
    SyncError,
    TokenProvider,
)
from ehi_bridge.sources.models import SourceAuthorization, SourceGrant
from ehi_bridge.sources.sync import Spool, Syncer, SyncPlan, SyncResult

log = structlog.get_logger(__name__)

TOKEN_LEEWAY = timedelta(seconds=30)  # refresh this long before the token expires


class SourceConfigError(ValueError):
    """The request names an unknown platform or institution, or lacks a setting (400)."""


class AuthorizationFailed(Exception):
    """The code exchange failed (unknown state, refused code, …); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceKeys:
    cipher: TokenCipher
    signing: SigningKey


_keys: dict[tuple[str, str, str], SourceKeys] = {}
_keys_lock = threading.Lock()


def source_keys(db: Database, settings: Settings) -> SourceKeys:
    """The token cipher and the signing key: from settings, else from secrets generated
    once per installation (shared by every process on the database)."""
    token_key = settings.source_token_key.get_secret_value() if settings.source_token_key else ""
    signing = settings.source_signing_key.get_secret_value() if settings.source_signing_key else ""
    cache_key = (db.url, token_key, signing)
    with _keys_lock:
        found = _keys.get(cache_key)
        if found is not None:
            return found
        if not token_key or not signing:
            with db.session() as session:
                token_key = token_key or instance_secret(session, "source_token_key")
                signing_secret = "" if signing else instance_secret(session, "source_signing_key")
        key = signing_key_from_setting(signing) if signing else derived_signing_key(signing_secret)
        found = _keys[cache_key] = SourceKeys(TokenCipher(token_key), key)
        return found


def jwks(db: Database, settings: Settings) -> dict[str, Any]:
    return source_keys(db, settings).signing.public_jwks()


# --- platforms, institutions, credentials -------------------------------------------------


def catalog(settings: Settings) -> list[Institution]:
    return load_catalog(settings.sources_catalog_file)


def resolve(
    settings: Settings,
    *,
    platform_id: str | None = None,
    institution_id: str | None = None,
    fhir_base_url: str | None = None,
) -> tuple[Platform, str]:
    """The platform and FHIR base a connection will use."""
    if institution_id:
        for institution in catalog(settings):
            if institution.id == institution_id:
                return definitions().platform(institution.platform), institution.fhir_base_url
        raise SourceConfigError(f"unknown institution {institution_id!r}")
    if not platform_id:
        raise SourceConfigError("name a platform or an institution")
    try:
        platform = definitions().platform(platform_id)
    except KeyError:
        raise SourceConfigError(f"unknown platform {platform_id!r}") from None
    base = fhir_base_url or sandbox_base_url(settings.smart_sandbox_url, platform)
    if not base:
        raise SourceConfigError("a FHIR base URL is needed for this platform")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SourceConfigError("the FHIR base URL must be an http(s) URL")
    return platform, base.rstrip("/")


def credentials(
    settings: Settings,
    platform: Platform,
    keys: SourceKeys,
    client_id: str | None = None,
    token_auth: str | None = None,
) -> oauth.ClientCredentials:
    client = client_id or settings.source_client_ids.get(platform.id) or platform.default_client_id
    if not client:
        raise SourceConfigError(f"no client id for platform {platform.id!r} (SOURCE_CLIENT_IDS)")
    method = token_auth or platform.token_auth
    if method not in ("none", "client_secret_basic", "private_key_jwt"):
        raise SourceConfigError(f"unknown token endpoint auth method {method!r}")
    secret = settings.source_client_secrets.get(platform.id)
    if method == "client_secret_basic" and secret is None:
        raise SourceConfigError(f"no client secret for platform {platform.id!r}")
    auth: TokenAuth = method  # type: ignore[assignment]
    return oauth.ClientCredentials(
        client_id=client,
        token_auth=auth,
        secret=secret.get_secret_value() if secret is not None else None,
        signing_key=keys.signing,
    )


# --- authorization ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthorizationStart:
    url: str
    state: str


def begin_authorization(
    db: Database,
    settings: Settings,
    *,
    platform_id: str | None = None,
    institution_id: str | None = None,
    fhir_base_url: str | None = None,
    external_id: str | None = None,
    connection_id: str | None = None,
    client_id: str | None = None,
    token_auth: str | None = None,
    redirect_uri: str | None = None,
) -> AuthorizationStart:
    """Discover the endpoints and build the authorize URL (PKCE S256, ``aud``, ``state``);
    the verifier waits, encrypted, for the redirect. ``connection_id`` re-authorizes an
    existing connection."""
    platform, base = resolve(
        settings,
        platform_id=platform_id,
        institution_id=institution_id,
        fhir_base_url=fhir_base_url,
    )
    keys = source_keys(db, settings)
    creds = credentials(settings, platform, keys, client_id, token_auth)
    try:
        endpoints = oauth.discover(base, platform)
    except oauth.DiscoveryFailure as exc:
        raise SourceConfigError(str(exc)) from exc
    state = oauth.new_state()
    verifier = oauth.new_code_verifier()
    redirect = redirect_uri or settings.source_redirect_uri()
    url = oauth.authorize_url(platform, creds, endpoints, base, redirect, state, verifier)
    with db.session() as session:
        repo.add_authorization(
            session,
            SourceAuthorization(
                state=state,
                platform=platform.id,
                fhir_base_url=base,
                authorize_endpoint=endpoints.authorize,
                token_endpoint=endpoints.token,
                redirect_uri=redirect,
                client_id=creds.client_id,
                token_auth=creds.token_auth,
                code_verifier=keys.cipher.encrypt(verifier, f"verifier:{state}") or "",
                external_id=external_id,
                connection_id=connection_id,
                created_at=utcnow(),
            ),
        )
    return AuthorizationStart(url, state)


def complete_authorization(
    db: Database, settings: Settings, state: str, code: str, *, sync: bool = True
) -> str:
    """Exchange the code (once: the pending authorization is consumed first), store the
    grant encrypted, make or re-authorize the connection, and start its first sync."""
    keys = source_keys(db, settings)
    with db.session() as session:
        pending = repo.take_authorization(session, state, utcnow())
        if pending is None:
            raise AuthorizationFailed("unknown_state")
        session.delete(pending)
    verifier = keys.cipher.decrypt(pending.code_verifier, f"verifier:{state}")
    platform = definitions().platform(pending.platform)
    creds = credentials(settings, platform, keys, pending.client_id, pending.token_auth)
    try:
        answer = oauth.exchange_code(
            creds, pending.token_endpoint, code, pending.redirect_uri, verifier
        )
    except oauth.OAuthFailure as exc:
        raise AuthorizationFailed(exc.error) from None
    if not answer.patient:
        raise AuthorizationFailed("no_patient_in_token_answer")
    now = utcnow()
    with db.session() as session:
        connection = (
            connections_repo.get(session, pending.connection_id) if pending.connection_id else None
        )
        if connection is None:
            connection = connections_repo.create_smart(
                session, platform.id, pending.fhir_base_url, pending.external_id
            )
        else:
            connection.status = ConnectionStatus.AUTHORIZED
            connection.status_changed_at = now
            connection.authorized_at = now
            connection.updated_at = now
        grant = repo.grant(session, connection.id, for_update=True)
        if grant is None:
            grant = SourceGrant(connection_id=connection.id, created_at=now, generation=0)
            session.add(grant)
        grant.platform = platform.id
        grant.fhir_base_url = pending.fhir_base_url
        grant.token_endpoint = pending.token_endpoint
        grant.client_id = creds.client_id
        grant.token_auth = creds.token_auth
        grant.patient_id = answer.patient
        connection.scope = (answer.scope or "")[:1024] or None
        _store_tokens(keys, grant, answer, now)
        grant.last_error = None
        if sync:
            exports_repo.create(session, connection.id, trigger="auto", source="smart")
        connection_id = connection.id
    log.info("source authorized", connection_id=connection_id, platform=platform.id)
    return connection_id


def _store_tokens(
    keys: SourceKeys, grant: SourceGrant, answer: oauth.TokenAnswer, now: datetime
) -> None:
    cid = grant.connection_id
    grant.access_token = keys.cipher.encrypt(answer.access_token, f"access:{cid}")
    if answer.refresh_token is not None:
        grant.refresh_token = keys.cipher.encrypt(answer.refresh_token, f"refresh:{cid}")
    grant.expires_at = now + timedelta(seconds=answer.expires_in or 300)
    if answer.scope:
        grant.scope = answer.scope
    grant.generation = (grant.generation or 0) + 1
    grant.updated_at = now


# --- tokens -------------------------------------------------------------------------------


def _usable(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at - TOKEN_LEEWAY > now


def _decrypt(keys: SourceKeys, grant: SourceGrant, which: str) -> str | None:
    stored = grant.access_token if which == "access" else grant.refresh_token
    try:
        return keys.cipher.decrypt(stored, f"{which}:{grant.connection_id}")
    except TokenDecryptError:
        return None


def _need_reauth(session: Session, settings: Settings, grant: SourceGrant, why: str) -> None:
    """The EHR refused the grant: the patient must authorize again."""
    now = utcnow()
    grant.access_token = None
    grant.refresh_token = None
    grant.expires_at = None
    grant.last_error = why[:64]
    grant.updated_at = now
    connection = connections_repo.get(session, grant.connection_id)
    if connection is not None and connection.status != ConnectionStatus.REAUTH_REQUIRED:
        connection.status = ConnectionStatus.REAUTH_REQUIRED
        connection.status_changed_at = now
        connection.updated_at = now
    raise_alert(
        session,
        settings,
        kind=SOURCE_REAUTH_REQUIRED,
        dedup_key=f"{SOURCE_REAUTH_REQUIRED}:{grant.connection_id}:{grant.generation}",
        message=f"Connection {grant.connection_id} must be authorized again ({why})",
        severity="error",
        context={"connection_id": grant.connection_id, "platform": grant.platform},
    )


def valid_access_token(
    db: Database, settings: Settings, connection_id: str, stale: str | None = None
) -> tuple[str, datetime]:
    """A usable access token: the stored one, or a refreshed one.

    A refresh runs under the grant's named lock (``db/named_lock.py``: an advisory lock or an
    ``flock``, no transaction held while the EHR answers), after checking again that nobody
    refreshed meanwhile, so any number of concurrent callers in any number of processes
    cause one token request. The answer
    (the rotated refresh token) is committed before the new access token is returned.
    ``stale`` is a token the server just refused: it is not returned again.
    """
    keys = source_keys(db, settings)
    now = utcnow()
    with db.read_session() as session:
        grant = repo.grant(session, connection_id)
        if grant is None:
            raise SyncError(FailureReason.REAUTH_REQUIRED, "no grant")
        access = _decrypt(keys, grant, "access")
        if access and access != stale and _usable(grant.expires_at, now):
            assert grant.expires_at is not None
            return access, grant.expires_at
    with named_lock(db, f"source-grant-refresh:{connection_id}"):
        return _refresh(db, settings, keys, connection_id, stale)


def _refresh(
    db: Database, settings: Settings, keys: SourceKeys, connection_id: str, stale: str | None
) -> tuple[str, datetime]:
    """Under the grant's refresh lock: read, ask the EHR with no transaction open, then
    store the answer (and the rotated refresh token) in one short write."""
    with db.read_session() as session:
        grant = repo.grant(session, connection_id)
    if grant is None:
        raise SyncError(FailureReason.REAUTH_REQUIRED, "no grant")
    access = _decrypt(keys, grant, "access")
    if access and access != stale and _usable(grant.expires_at, utcnow()):
        assert grant.expires_at is not None
        return access, grant.expires_at  # refreshed by someone else meanwhile
    refresh_token = _decrypt(keys, grant, "refresh")
    answer: oauth.TokenAnswer | None = None
    error: str | None = None if refresh_token else "no_refresh_token"
    if refresh_token is not None:
        platform = definitions().platform(grant.platform)
        creds = credentials(settings, platform, keys, grant.client_id, grant.token_auth)
        try:
            answer = oauth.refresh(creds, grant.token_endpoint, refresh_token)
        except oauth.OAuthFailure as exc:
            error = exc.error
    with db.session() as session:
        stored = repo.grant(session, connection_id, for_update=True)
        if stored is None:
            raise SyncError(FailureReason.REAUTH_REQUIRED, "no grant")
        now = utcnow()
        if stored.generation != grant.generation and _usable(stored.expires_at, now):
            # Authorized again while the EHR answered: the new grant wins.
            fresh = _decrypt(keys, stored, "access")
            if fresh and stored.expires_at is not None:
                return fresh, stored.expires_at
        if answer is not None:
            _store_tokens(keys, stored, answer, now)
            stored.last_error = None
            assert stored.expires_at is not None
            token, expires = answer.access_token, stored.expires_at
        elif error in ("no_refresh_token", "invalid_grant"):
            _need_reauth(session, settings, stored, str(error))
        else:
            stored.last_error = str(error)[:64]
    # committed: the rotated refresh token is durable before the access token is used
    if answer is None:
        if error in ("no_refresh_token", "invalid_grant"):
            raise SyncError(FailureReason.REAUTH_REQUIRED, str(error))
        reason = (
            FailureReason.UNAUTHORIZED
            if error in ("invalid_client", "unauthorized_client")
            else FailureReason.SERVER_ERROR
        )
        raise SyncError(reason, f"token refresh: {error}")
    log.info("source token refreshed", connection_id=connection_id)
    return token, expires


class GrantTokens:
    """A sync's view of its connection's tokens (``fetch.TokenProvider``). Coroutines of
    one sync share one refresh; threads and processes share the database lock."""

    def __init__(self, db: Database, settings: Settings, connection_id: str) -> None:
        self.db = db
        self.settings = settings
        self.connection_id = connection_id
        self._token: str | None = None
        self._expires: datetime | None = None
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self._token is not None and _usable(self._expires, utcnow())

    async def token(self) -> str:
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if not self._fresh():
                self._token, self._expires = await asyncio.to_thread(
                    valid_access_token, self.db, self.settings, self.connection_id
                )
            assert self._token is not None
            return self._token

    async def rejected(self, token: str) -> str:
        async with self._lock:
            if self._token != token and self._fresh():
                assert self._token is not None
                return self._token
            fresh, self._expires = await asyncio.to_thread(
                valid_access_token, self.db, self.settings, self.connection_id, token
            )
            self._token = fresh
            return fresh


# --- sync steps ---------------------------------------------------------------------------


def spool_path(settings: Settings, export_id: int) -> Path:
    path = settings.data_dir / "downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path / f"sync-{export_id}.json"


@dataclass(frozen=True, slots=True)
class SyncTarget:
    export_id: int
    connection_id: str
    platform: Platform
    fhir_base_url: str
    patient_id: str
    client_id: str


def sync_target(db: Database, export_id: int) -> SyncTarget | None:
    """What to pull, or None when this export is no longer being pulled."""
    with db.read_session() as session:
        export = exports_repo.get(session, export_id)
        if export is None or export.source != "smart" or export.status != ExportStatus.DOWNLOADING:
            return None
        grant = repo.grant(session, export.connection_id)
        if grant is None or grant.patient_id is None:
            return None
        return SyncTarget(
            export.id,
            export.connection_id,
            definitions().platform(grant.platform),
            grant.fhir_base_url,
            grant.patient_id,
            grant.client_id,
        )


def record_pulled(db: Database, export_id: int, result: dict[str, Any], size: int) -> bool:
    """The spool is complete: its counts become the export's expected counts."""
    with db.session() as session:
        export = exports_repo.get(session, export_id, for_update=True)
        if export is None:
            return False
        export.stats_total = int(result["total"])
        export.stats_by_type = dict(result["by_type"])
        export.bytes_downloaded = size
        export.report = {"sync": result}
        export.requested_at = export.requested_at or export.created_at
        return (
            exports_repo.move(export, ExportEvent.DOWNLOADED)
            or export.status == ExportStatus.INGESTING
        )


def ingest_inputs(
    db: Database, export_id: int
) -> tuple[str, int | None, dict[str, int] | None, dict[str, Any]] | None:
    with db.read_session() as session:
        export = exports_repo.get(session, export_id)
        if export is None or export.source != "smart" or export.status != ExportStatus.INGESTING:
            return None
        sync = (export.report or {}).get("sync") or {}
        return export.connection_id, export.stats_total, export.stats_by_type, sync


def _alert_context(export: Export) -> dict[str, str | int | None]:
    return {"export_id": export.id, "connection_id": export.connection_id}


def record_synced(
    db: Database,
    settings: Settings,
    export_id: int,
    ingest_report: dict[str, Any],
    complete: bool,
    sync: dict[str, Any],
) -> bool:
    """The ingest is done: complete, or partial when a search failed or counts differ."""
    problems: dict[str, str] = dict(sync.get("problems") or {})
    complete = complete and not problems
    with db.session() as session:
        export = exports_repo.get(session, export_id, for_update=True)
        if export is None:
            return False
        moved = exports_repo.move(
            export, ExportEvent.INGESTED_COMPLETE if complete else ExportEvent.INGESTED_PARTIAL
        )
        if not moved:
            return False
        export.report = {**ingest_report, "sync": sync}
        resources = ingest_report.get("resources")
        export.ingested_total = resources if isinstance(resources, int) else None
        by_type = ingest_report.get("by_type")
        export.ingested_by_type = by_type if isinstance(by_type, dict) else None
        export.completed_at = utcnow()
        grant = repo.grant(session, export.connection_id)
        if grant is not None:
            grant.last_synced_at = export.completed_at
        if complete:
            return True
        reason = next(iter(sorted(set(problems.values()))), "ingest_partial")
        export.failure_reason = reason
        what = ", ".join(f"{k}: {v}" for k, v in sorted(problems.items()))[:300]
        export.last_error = what or "the ingest differs from the sync's counts"
        raise_alert(
            session,
            settings,
            kind=SOURCE_SYNC_PARTIAL,
            dedup_key=f"{SOURCE_SYNC_PARTIAL}:{export.id}",
            message=f"Sync {export.id} is incomplete ({reason}; {len(problems)} searches failed)",
            context={**_alert_context(export), "reason": reason},
        )
        return True


def sync_failed(db: Database, settings: Settings, export_id: int, reason: str, detail: str) -> bool:
    with db.session() as session:
        export = exports_repo.get(session, export_id, for_update=True)
        if export is None or not exports_repo.move(export, ExportEvent.SYNC_FAILED):
            return False
        export.failure_reason = reason
        export.last_error = detail[:500] or reason
        export.completed_at = utcnow()
        grant = repo.grant(session, export.connection_id)
        if grant is not None:
            grant.last_synced_at = export.completed_at
        raise_alert(
            session,
            settings,
            kind=SOURCE_SYNC_FAILED,
            dedup_key=f"{SOURCE_SYNC_FAILED}:{export.id}",
            message=f"Sync {export.id} failed: {reason}",
            severity="error",
            context={**_alert_context(export), "reason": reason},
        )
        return True


def sweep_resyncs(db: Database, settings: Settings, now: datetime, limit: int = 100) -> int:
    """Start a sync of every authorized smart connection due for one (the setting)."""
    if settings.source_resync_hours <= 0:
        return 0
    every = timedelta(hours=settings.source_resync_hours)
    with db.session() as session:
        due = repo.due_for_resync(session, now, every, limit)
        for connection_id in due:
            exports_repo.create(session, connection_id, trigger="schedule", source="smart")
    return len(due)


# --- the pull -----------------------------------------------------------------------------


def plan_for(settings: Settings, target: SyncTarget) -> SyncPlan:
    return SyncPlan(
        platform=target.platform,
        patient_id=target.patient_id,
        types=target.platform.types(definitions().us_core_types),
        page_size=target.platform.page_size,
        max_pages=settings.source_max_pages,
        reference_rounds=settings.source_reference_rounds,
    )


def client_headers(platform: Platform, client_id: str) -> dict[str, str]:
    return {k: v.replace("{client_id}", client_id) for k, v in platform.headers.items()}


async def pull(
    settings: Settings,
    tokens: TokenProvider,
    target: SyncTarget,
    spool: Spool,
    limiter: HostLimiter,
    progress: Callable[[int], None] | None = None,
) -> SyncResult:
    """Pull ``target``'s records into ``spool`` (raises :class:`SyncError`)."""
    pace = Pace(target.platform.requests_per_second)
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as http:
        client = FhirClient(
            http,
            target.fhir_base_url,
            tokens,
            limiter,
            headers=client_headers(target.platform, target.client_id),
            max_retries=settings.source_max_retries,
            max_wait=settings.source_max_retry_after_seconds,
            pace=pace.wait if pace.per_second else None,
        )
        return await Syncer(client, plan_for(settings, target), spool, progress).run()


# --- one sync's steps (the workflow in tasks.py runs them durably) ------------------------


async def pull_export(
    db: Database, settings: Settings, limiter: HostLimiter, export_id: int
) -> dict[str, Any]:
    """Pull the export's records into its spool and record the counts; the outcome."""
    target = await asyncio.to_thread(sync_target, db, export_id)
    if target is None:
        return {"outcome": "skip"}
    path = spool_path(settings, export_id)
    tokens = GrantTokens(db, settings, target.connection_id)
    try:
        with Spool(path) as spool:
            result = await pull(settings, tokens, target, spool, limiter)
    except SyncError as exc:
        log.warning("source sync failed", export_id=export_id, reason=exc.reason)
        return {"outcome": "error", "reason": exc.reason, "detail": str(exc)}
    size = path.stat().st_size
    await asyncio.to_thread(record_pulled, db, export_id, result.as_dict(), size)
    log.info("source pulled", export_id=export_id, resources=result.total, pages=result.pages)
    return {"outcome": "ok", "total": result.total}


def ingest_export(db: Database, settings: Settings, export_id: int) -> str:
    """Ingest a pulled spool with the records ingest (same store, reconciliation, run)."""
    inputs = ingest_inputs(db, export_id)
    if inputs is None:
        return "skip"
    connection_id, expected_total, expected_by_type, sync = inputs
    path = spool_path(settings, export_id)
    report = ingest_file(
        db,
        path,
        connection_id=connection_id,
        export_id=export_id,
        expected_total=expected_total,
        expected_by_type=expected_by_type,
        source="smart",
        quarantine_bytes=settings.quarantine_max_bytes,
    )
    record_synced(db, settings, export_id, report.as_dict(), report.complete, sync)
    path.unlink(missing_ok=True)
    return "complete" if report.complete and not sync.get("problems") else "partial"


async def run_sync(db: Database, settings: Settings, limiter: HostLimiter, export_id: int) -> str:
    """One sync, here and now (CLI, tests): pull, then ingest, or record the failure. The
    background runs the same steps durably (``sources/tasks.py``)."""
    pulled = await pull_export(db, settings, limiter, export_id)
    if pulled["outcome"] == "error":
        await asyncio.to_thread(
            sync_failed, db, settings, export_id, str(pulled["reason"]), str(pulled["detail"])
        )
        return "failed"
    if pulled["outcome"] == "skip" and ingest_inputs(db, export_id) is None:
        return "skipped"
    return await asyncio.to_thread(ingest_export, db, settings, export_id)


def start_sync_here(db: Database, connection_id: str, trigger: str = "manual") -> int:
    """A new sync export of a smart connection that this process runs itself: its outbox
    row is written already started, so no background process starts it too."""
    with db.session() as session:
        connection = connections_repo.find(session, connection_id)
        if connection is None:
            raise LookupError(connection_id)
        if connection.source != "smart":
            raise SourceConfigError(f"connection {connection.id} is not a SMART connection")
        if connection.status != ConnectionStatus.AUTHORIZED:
            raise SourceConfigError(f"connection {connection.id} is {connection.status}")
        if exports_repo.active_for_connection(session, connection.id):
            raise SourceConfigError(f"connection {connection.id} has a sync in progress")
        export = exports_repo.create(session, connection.id, trigger=trigger, source="smart")
        outbox_repo.mark_started(
            session, [outbox_repo.sync_source(export.id).workflow_id], utcnow()
        )
        return export.id
