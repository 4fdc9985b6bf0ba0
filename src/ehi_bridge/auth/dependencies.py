"""FastAPI dependencies: who is calling. ``require_api_token`` guards the REST API."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ehi_bridge.auth.service import Actor, find_token, mark_token_used, needs_touch
from ehi_bridge.deps import DatabaseDep

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    description="An API token from `ehi-bridge auth token create NAME`.",
)

# Set by ``guard.middleware.RequestGuard`` once it has authenticated the request.
API_ACTOR_STATE = "api_actor"

BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]


def unauthorized(detail: str = "a valid API token is required") -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


def authenticate_bearer(db: DatabaseDep, plaintext: str) -> Actor | None:
    """Look the token up in a read transaction; write ``last_used_at`` only when stale."""
    with db.read_session() as session:
        token = find_token(session, plaintext)
        if token is None:
            return None
        token_id, name, stale = token.id, token.name, needs_touch(token)
    if stale:
        with db.session() as session:
            mark_token_used(session, token_id)
    return Actor(kind="token", name=name)


def optional_api_token(
    request: Request, db: DatabaseDep, credentials: BearerCredentials
) -> Actor | None:
    """The calling token's actor, or None when there is no valid bearer token."""
    checked = getattr(request.state, API_ACTOR_STATE, None)
    if isinstance(checked, Actor):
        request.state.actor = checked
        return checked
    if credentials is None or not credentials.credentials:
        return None
    actor = authenticate_bearer(db, credentials.credentials)
    if actor is not None:
        request.state.actor = actor
    return actor


def require_api_token(request: Request, db: DatabaseDep, credentials: BearerCredentials) -> Actor:
    """401 with ``WWW-Authenticate: Bearer`` unless a live API token is presented."""
    actor = optional_api_token(request, db, credentials)
    if actor is None:
        raise unauthorized()
    return actor


ApiActor = Annotated[Actor, Depends(require_api_token)]
OptionalApiActor = Annotated[Actor | None, Depends(optional_api_token)]
