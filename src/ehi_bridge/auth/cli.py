"""`ehi-bridge auth …` commands: API tokens and dashboard users.

Only Typer is imported at the top (the CLI starts instantly); each command imports the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

app = typer.Typer(no_args_is_help=True, help="API tokens and dashboard users.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens for the REST API.")
user_app = typer.Typer(no_args_is_help=True, help="Dashboard users.")
app.add_typer(token_app, name="token")
app.add_typer(user_app, name="user")

T = TypeVar("T")


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


def _run(action: Callable[[Session], T]) -> T:
    """``action`` in one transaction; an ``AuthError`` becomes one line and exit code 1."""
    from ehi_bridge.auth.service import AuthError

    try:
        with _session() as session:
            return action(session)
    except AuthError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None


@token_app.command("create")
def token_create(name: str = typer.Argument(..., help="What the token is for")) -> None:
    """Create a token and print it once (only its hash is kept)."""
    from ehi_bridge.auth import service

    def create(session: Session) -> tuple[int, str]:
        token, plaintext = service.create_api_token(session, name)
        return token.id, plaintext

    token_id, plaintext = _run(create)
    typer.echo(f"created token {token_id} ({name}); it is shown once, store it now:", err=True)
    typer.echo(plaintext)


@token_app.command("list")
def token_list() -> None:
    """List tokens (never their values)."""
    from ehi_bridge.auth import service

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
    from ehi_bridge.auth import service

    _run(lambda session: service.revoke_api_token(session, token_id))
    typer.echo(f"revoked token {token_id}")


@user_app.command("create")
def user_create(
    username: str = typer.Argument(...),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin"
    ),
) -> None:
    """Create a dashboard user (the password is prompted for unless --password-stdin)."""
    from ehi_bridge.auth import service

    # A taken or malformed name is refused before anyone types a password.
    username = _run(lambda session: service.check_new_username(session, username))
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    _run(lambda session: service.create_user(session, username, password))
    typer.echo(f"created user {username}")


@user_app.command("disable")
def user_disable(username: str = typer.Argument(...)) -> None:
    """Disable a dashboard user; they can no longer sign in."""
    from ehi_bridge.auth import service

    _run(lambda session: service.disable_user(session, username))
    typer.echo(f"disabled user {username}")


connect_link_app = typer.Typer(
    no_args_is_help=True, help="Signed links to the patient connect page."
)


@connect_link_app.command("create")
def connect_link_create(
    external_id: str = typer.Option(
        ..., "--external-id", help="Your user id for the patient who will connect."
    ),
    ttl_hours: int = typer.Option(24, "--ttl-hours", min=1, max=168, help="Hours it stays valid."),
) -> None:
    """Print a connect-page link for one patient (needs EHI_CONNECT_LINK_SECRET)."""
    from ehi_bridge.auth import service
    from ehi_bridge.auth.connect_links import ConnectLinkError, make_connect_link
    from ehi_bridge.config import Settings

    external_id = external_id.strip()
    if not external_id or len(external_id) > 255:
        typer.echo("error: --external-id must be 1-255 characters", err=True)
        raise typer.Exit(code=2)
    try:
        link = make_connect_link(Settings(), external_id, ttl=ttl_hours * 3600)
    except ConnectLinkError:
        typer.echo(
            "error: EHI_CONNECT_LINK_SECRET is not set: connect links cannot be made", err=True
        )
        raise typer.Exit(code=1) from None
    _run(
        lambda session: service.record_audit(
            session, "cli", "connect_link.create", "external_id", external_id, "cli"
        )
    )
    typer.echo(f"valid for {ttl_hours} hours; send it to the patient:", err=True)
    typer.echo(link)
