"""FastAPI dependencies: the request's view of the running service."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from ehi_bridge.config import Settings
from ehi_bridge.db.engine import Database


@dataclass
class AppContext:
    """Everything a request handler may need; built once in ``create_app``."""

    settings: Settings
    db: Database
    extras: dict[str, Any] = field(default_factory=dict)


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def get_settings(ctx: Annotated[AppContext, Depends(get_ctx)]) -> Settings:
    return ctx.settings


def get_db(ctx: Annotated[AppContext, Depends(get_ctx)]) -> Database:
    return ctx.db


def read_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[Session]:
    with db.read_session() as session:
        yield session


def write_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[Session]:
    """One request, one transaction, committed at the edge."""
    with db.session() as session:
        yield session


CtxDep = Annotated[AppContext, Depends(get_ctx)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
ReadSession = Annotated[Session, Depends(read_session)]
# "function": the transaction commits before the answer leaves, so a client that follows
# it at once (a redirect after login) sees the write.
WriteSession = Annotated[Session, Depends(write_session, scope="function")]
