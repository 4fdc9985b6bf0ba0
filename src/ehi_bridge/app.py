"""The ASGI application: signed webhooks on a lean path, everything else on FastAPI."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from ehi_bridge.api import docs
from ehi_bridge.api.endpoints import router as api_router
from ehi_bridge.config import Settings
from ehi_bridge.connect.endpoints import router as connect_router
from ehi_bridge.dashboard.endpoints import router as dashboard_router
from ehi_bridge.db.engine import Database
from ehi_bridge.deps import AppContext
from ehi_bridge.guard.errors import validation_error
from ehi_bridge.guard.middleware import RequestGuard
from ehi_bridge.ops.endpoints import router as ops_router
from ehi_bridge.records.endpoints import router as records_router
from ehi_bridge.sources.definitions import use_user_definitions
from ehi_bridge.sources.endpoints import api_router as sources_api_router
from ehi_bridge.sources.endpoints import router as sources_router


def create_api(settings: Settings, db: Database) -> FastAPI:
    """The FastAPI part (API, dashboard, connect page, operations)."""
    # /docs and /redoc come from docs.router with assets served here, not from a CDN.
    api = FastAPI(title="ehi-bridge", version="0.1.0", docs_url=None, redoc_url=None)
    api.state.ctx = AppContext(settings=settings, db=db)
    use_user_definitions(settings.sources_definitions_file)
    api.include_router(ops_router)
    api.include_router(api_router)
    api.include_router(records_router)
    api.include_router(dashboard_router)
    api.include_router(connect_router)
    api.include_router(sources_router)
    api.include_router(sources_api_router)
    api.add_exception_handler(RequestValidationError, validation_error)
    api.add_middleware(RequestGuard, ctx=api.state.ctx)
    api.include_router(docs.router)
    api.mount(docs.STATIC_PATH, docs.static_files(), name="docs-static")
    return api
