"""`ehi-bridge auth …` through Typer's runner, against a real database."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ehi_bridge.auth import service
from ehi_bridge.auth.models import ApiToken, DashboardUser
from ehi_bridge.cli import app
from ehi_bridge.db.engine import Database


@pytest.fixture
def run(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("EHI_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)  # no stray .env
    runner = CliRunner()

    def invoke(*args: str, stdin: str | None = None) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return runner.invoke(app, ["auth", *args], input=stdin)

    return invoke


def test_token_create_list_revoke(run: Callable[..., Any], db: Database) -> None:
    created = run("token", "create", "ci-bot")
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip().splitlines()[-1]
    assert plaintext.startswith("ehib_")
    with db.session() as session:
        token = service.authenticate_token(session, plaintext)
        assert token is not None and token.name == "ci-bot"
        token_id = token.id
    listed = run("token", "list")
    assert listed.exit_code == 0
    assert "ci-bot" in listed.stdout and plaintext not in listed.stdout
    with db.read_session() as session:
        stored_hash = session.scalars(select(ApiToken.token_hash)).one()
    assert stored_hash not in listed.stdout
    revoked = run("token", "revoke", str(token_id))
    assert revoked.exit_code == 0
    with db.session() as session:
        assert service.authenticate_token(session, plaintext) is None
    assert run("token", "revoke", "999").exit_code == 1
    assert run("token", "create", " ").exit_code == 1


def test_user_create_and_disable(run: Callable[..., Any], db: Database) -> None:
    created = run("user", "create", "alice", "--password-stdin", stdin="a long password\n")
    assert created.exit_code == 0, created.output
    prompted = run("user", "create", "bob", stdin="bob's password\nbob's password\n")
    assert prompted.exit_code == 0, prompted.output
    assert run("user", "create", "alice", "--password-stdin", stdin="x" * 12).exit_code == 1
    assert run("user", "create", "carol", "--password-stdin", stdin="short\n").exit_code == 1
    with db.session() as session:
        assert service.verify_user(session, "alice", "a long password") is not None
        assert service.verify_user(session, "bob", "bob's password") is not None
    assert run("user", "disable", "alice").exit_code == 0
    assert run("user", "disable", "nobody").exit_code == 1
    with db.session() as session:
        assert service.verify_user(session, "alice", "a long password") is None
        names = session.scalars(select(DashboardUser.username).order_by(DashboardUser.id)).all()
        assert names == ["alice", "bob"]


def test_duplicate_names_are_refused_before_any_prompt(
    run: Callable[..., Any], db: Database
) -> None:
    assert run("token", "create", "my-app").exit_code == 0
    again = run("token", "create", "my-app")
    assert again.exit_code == 1
    assert "already exists" in again.stderr and "ehib_" not in again.stdout
    with db.read_session() as session:
        assert session.scalars(select(ApiToken.name)).all() == ["my-app"]
    assert (
        run("user", "create", "dora", "--password-stdin", stdin="a long password\n").exit_code == 0
    )
    # No input at all: a prompt would read end of input; the refusal comes first.
    refused = run("user", "create", "dora")
    assert refused.exit_code == 1
    assert "already exists" in refused.stderr
    assert "Password" not in refused.output


def test_a_revoked_token_name_can_be_reused(run: Callable[..., Any], db: Database) -> None:
    created = run("token", "create", "rotating")
    with db.read_session() as session:
        token_id = session.scalars(select(ApiToken.id)).one()
    assert created.exit_code == 0 and run("token", "revoke", str(token_id)).exit_code == 0
    assert run("token", "create", "rotating").exit_code == 0
