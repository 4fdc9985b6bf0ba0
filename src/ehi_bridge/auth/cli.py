"""`ehi-bridge auth …` commands: API tokens and dashboard users."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from sqlalchemy.orm import Session

from ehi_bridge.auth import service
from ehi_bridge.auth.service import AuthError

app = typer.Typer(no_args_is_help=True, help="API tokens and dashboard users.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens for the REST API.")
user_app = typer.Typer(no_args_is_help=True, help="Dashboard users.")
app.add_typer(token_app, name="token")
app.add_typer(user_app, name="user")


@contextmanager
def _session() -> Iterator[Session]:
    from ehi_bridge.config import Settings
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import ensure_schema

    url = Settings().resolved_database_url
    ensure_schema(url)
    db = Database(url)
    try:
        with db.session() as session:
            yield session
    finally:
        db.dispose()


def _fail(error: AuthError) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=1)


@token_app.command("create")
def token_create(name: str = typer.Argument(..., help="What the token is for")) -> None:
    """Create a token and print it once (only its hash is kept)."""
    try:
        with _session() as session:
            token, plaintext = service.create_api_token(session, name)
            token_id = token.id
    except AuthError as error:
        _fail(error)
        return
    typer.echo(f"created token {token_id} ({name}); it is shown once, store it now:", err=True)
    typer.echo(plaintext)


@token_app.command("list")
def token_list() -> None:
    """List tokens (never their values)."""
    with _session() as session:
        tokens = service.list_api_tokens(session)
        typer.echo("id\tname\tcreated_at\tlast_used_at\trevoked_at")
        for t in tokens:
            cells = [t.created_at, t.last_used_at, t.revoked_at]
            dates = "\t".join(c.isoformat(timespec="seconds") if c else "-" for c in cells)
            typer.echo(f"{t.id}\t{t.name}\t{dates}")


@token_app.command("revoke")
def token_revoke(token_id: int = typer.Argument(..., help="Id from `token list`")) -> None:
    """Revoke a token; requests bearing it get 401 from now on."""
    try:
        with _session() as session:
            service.revoke_api_token(session, token_id)
    except AuthError as error:
        _fail(error)
    typer.echo(f"revoked token {token_id}")


@user_app.command("create")
def user_create(
    username: str = typer.Argument(...),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin"
    ),
) -> None:
    """Create a dashboard user (the password is prompted for unless --password-stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with _session() as session:
            service.create_user(session, username, password)
    except AuthError as error:
        _fail(error)
    typer.echo(f"created user {username}")


@user_app.command("disable")
def user_disable(username: str = typer.Argument(...)) -> None:
    """Disable a dashboard user; they can no longer sign in."""
    try:
        with _session() as session:
            service.disable_user(session, username)
    except AuthError as error:
        _fail(error)
    typer.echo(f"disabled user {username}")
