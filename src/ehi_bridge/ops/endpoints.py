"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from ehi_bridge.auth.dependencies import BearerCredentials, require_api_token
from ehi_bridge.db.base import utcnow
from ehi_bridge.db.migrate import is_current
from ehi_bridge.deps import AppContext, CtxDep, DatabaseDep
from ehi_bridge.ops import metrics, repository

router = APIRouter(tags=["ops"])


class Health(BaseModel):
    status: str


class Check(BaseModel):
    ok: bool
    detail: str
    value: float | None = None


class Readiness(BaseModel):
    status: str  # "ok" | "fail"
    checks: dict[str, Check]


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


def _check_database(ctx: AppContext) -> Check:
    with ctx.db.read_session() as session:
        repository.ping(session)
    return Check(ok=True, detail="reachable")


def _check_migrations(ctx: AppContext) -> Check:
    if is_current(ctx.db.engine):
        return Check(ok=True, detail="at head")
    return Check(ok=False, detail="schema is not at the latest migration")


def _check_runtime(ctx: AppContext) -> Check:
    heartbeat: Callable[[], float | None] | None = ctx.extras.get("runtime_heartbeat")
    if heartbeat is None:
        return Check(ok=True, detail="no background runtime in this process")
    age = heartbeat()
    if age is None:
        return Check(ok=False, detail="background processing has not reported yet")
    limit = ctx.settings.ready_max_heartbeat_age_seconds
    if age > limit:
        return Check(ok=False, detail=f"last heartbeat older than {limit:g}s", value=age)
    return Check(ok=True, detail="alive", value=age)


def _check_inbox(ctx: AppContext) -> Check:
    with ctx.db.read_session() as session:
        oldest = repository.oldest_unprocessed_at(session)
    if oldest is None:
        return Check(ok=True, detail="nothing waiting", value=0.0)
    lag = max(0.0, (utcnow() - oldest).total_seconds())
    limit = ctx.settings.ready_max_inbox_lag_seconds
    if lag > limit:
        return Check(ok=False, detail=f"oldest unprocessed event older than {limit:g}s", value=lag)
    return Check(ok=True, detail="within threshold", value=lag)


def _stall_window(ctx: AppContext) -> timedelta:
    return timedelta(minutes=ctx.settings.export_stall_minutes)


def _check_exports(ctx: AppContext) -> Check:
    """Stalled exports are counted and alerted, but they do not make the process unready:
    taking it out of rotation would stop webhooks too, which would not help them."""
    with ctx.db.read_session() as session:
        stalled = repository.stalled_exports(session, utcnow(), _stall_window(ctx))
    detail = f"{stalled} stalled (see alerts)" if stalled else "none stalled"
    return Check(ok=True, detail=detail, value=float(stalled))


CHECKS: dict[str, Callable[[AppContext], Check]] = {
    "database": _check_database,
    "migrations": _check_migrations,
    "runtime": _check_runtime,
    "inbox": _check_inbox,
    "exports": _check_exports,
}


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: database, schema, background processing, inbox lag",
    responses={503: {"model": Readiness, "description": "at least one check failed"}},
)
def readyz(ctx: CtxDep) -> JSONResponse:
    checks: dict[str, Check] = {}
    for name, check in CHECKS.items():
        try:
            checks[name] = check(ctx)
        except Exception as error:  # a failing check is a result, not a crash
            checks[name] = Check(ok=False, detail=f"error: {type(error).__name__}")
        if name == "database" and not checks[name].ok:
            skipped = Check(ok=False, detail="skipped: database unreachable")
            checks.update({other: skipped for other in CHECKS if other != name})
            break
    ok = all(c.ok for c in checks.values())
    body = Readiness(status="ok" if ok else "fail", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def metrics_auth(
    request: Request, ctx: CtxDep, db: DatabaseDep, credentials: BearerCredentials
) -> None:
    if ctx.settings.metrics_require_token:
        require_api_token(request, db, credentials)


_scrape_lock = threading.Lock()


def _refresh_gauges(ctx: AppContext) -> None:
    with ctx.db.read_session() as session:
        oldest = repository.oldest_unprocessed_at(session)
        by_status = repository.exports_count_by_status(session)
        stalled = repository.stalled_exports(session, utcnow(), _stall_window(ctx))
    lag = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
    metrics.processing_lag_seconds.set(lag)
    metrics.exports_stalled.set(stalled)
    metrics.exports_by_status.clear()
    for status, count in by_status.items():
        metrics.exports_by_status.labels(status=status).set(count)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    dependencies=[Depends(metrics_auth)],
)
def prometheus_metrics(ctx: CtxDep) -> Response:
    with _scrape_lock:
        try:
            _refresh_gauges(ctx)
        except Exception:  # database down: still export the process counters
            metrics.exports_by_status.clear()
        payload: Any = generate_latest(metrics.REGISTRY)
    return Response(content=payload, media_type=CONTENT_TYPE_LATEST)
