"""The source console's guards over real HTTP: one-use ``state``, same-origin POSTs, the
token off loopback (and the refusal to bind there without one), and tokens kept out of
its log."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ehi_bridge.config import Settings
from ehi_bridge.sources.console.cli import bind_refusal
from ehi_bridge.sources.console.endpoints import create_console_app
from ehi_bridge.sources.console.service import Console
from tests.e2e.browser.conftest import ThreadedServer
from tests.integration.sources.conftest import Sandbox
from tests.smart_flow import consent
from tests.support import ehi_command, free_port, running

CONSOLE_TOKEN = "console-token-0123456789abcdef"
ANY = "0.0.0.0"  # noqa: S104  (what is refused)


@pytest.fixture
def console_url(tmp_path: Path, smart: Sandbox) -> Iterator[str]:
    console = Console(Settings(data_dir=tmp_path), sandbox_url=smart.url, out_dir=tmp_path)
    with ThreadedServer(create_console_app(console)) as server:
        yield server.base_url


def _start(http: httpx.Client, platform: str = "sandbox-generic") -> str:
    answer = http.post("/start", data={"kind": "platform", "platform": platform})
    assert answer.status_code == 303, answer.text
    return answer.headers["location"]


def test_callback_refuses_a_wrong_or_replayed_state(console_url: str) -> None:
    with httpx.Client(base_url=console_url, timeout=15) as http:
        redirect = consent(_start(http))
        code, state = redirect["code"], redirect["state"]

        wrong = http.get("/callback", params={"code": code, "state": state[:-2] + "xx"})
        assert wrong.status_code == 400
        assert "unknown or already used state" in wrong.text

        first = http.get("/callback", params={"code": code, "state": state})
        assert first.status_code == 303 and first.headers["location"].startswith("/s/")
        page = http.get(first.headers["location"])
        assert code in page.text

        replay = http.get("/callback", params={"code": code, "state": state})
        assert replay.status_code == 400
        again = http.post("/callback", json={"code": code, "state": state})
        assert again.status_code == 400 and "already used" in again.json()["error"]

        # The fragment path takes a fresh state once, too.
        redirect = consent(_start(http))
        ok = http.post("/callback", json=redirect)
        assert ok.status_code == 200 and ok.json()["next"].startswith("/s/")
        assert http.post("/callback", json=redirect).status_code == 400


def test_cross_origin_posts_are_refused(console_url: str) -> None:
    with httpx.Client(base_url=console_url, timeout=15) as http:
        answer = http.post(
            "/start",
            data={"kind": "platform", "platform": "sandbox-generic"},
            headers={"Origin": "http://evil.example"},
        )
        assert answer.status_code == 403
        same = http.post(
            "/start",
            data={"kind": "platform", "platform": "sandbox-generic"},
            headers={"Origin": console_url},
        )
        assert same.status_code == 303
        # A page of another site resolving its name to 127.0.0.1 (DNS rebinding) is refused.
        assert http.get("/", headers={"Host": "evil.example"}).status_code == 403
        assert http.get("/", headers={"Host": "localhost:9999"}).status_code == 200


def test_a_console_token_is_required_when_set(tmp_path: Path, smart: Sandbox) -> None:
    console = Console(Settings(data_dir=tmp_path), sandbox_url=smart.url, out_dir=tmp_path)
    with (
        ThreadedServer(create_console_app(console, CONSOLE_TOKEN)) as server,
        httpx.Client(base_url=server.base_url, timeout=15) as http,
    ):
        assert http.get("/").status_code == 401
        assert http.post("/start", data={"kind": "platform"}).status_code == 401
        assert http.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
        bearer = http.get("/", headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"})
        assert bearer.status_code == 200
        assert http.get("/", params={"token": "wrong"}).status_code == 401
        entry = http.get("/", params={"token": CONSOLE_TOKEN})
        assert entry.status_code == 303 and "httponly" in entry.headers["set-cookie"].lower()
        assert http.get("/").status_code == 200  # the cookie now


def test_binding_off_loopback_needs_allow_remote_and_a_token(tmp_path: Path) -> None:
    assert bind_refusal("127.0.0.1", False, None) is None
    assert bind_refusal("::1", False, None) is None
    assert bind_refusal(ANY, False, CONSOLE_TOKEN) is not None
    assert bind_refusal(ANY, True, None) is not None
    assert bind_refusal(ANY, True, "short") is not None
    assert bind_refusal(ANY, True, CONSOLE_TOKEN) is None

    env = {"EHI_DATA_DIR": str(tmp_path), "EHI_CONSOLE_TOKEN": ""}
    # --allow-remote without a token: the command refuses before binding anything.
    done = subprocess.run(
        ehi_command("sources", "console", "--host", ANY, "--port", "1", "--allow-remote"),
        env={**os.environ, **env},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert b"needs a console token" in done.stderr

    # With both it starts, and every request needs the token.
    port = free_port()
    args = ["--host", ANY, "--port", str(port), "--allow-remote", "--token", CONSOLE_TOKEN]
    with running(
        ehi_command("sources", "console", *args),
        env,
        ready_url=f"http://127.0.0.1:{port}/static/console.css",
        log_path=tmp_path / "console.log",
    ):
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 401
        headers = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
        assert httpx.get(f"http://127.0.0.1:{port}/", headers=headers).status_code == 200


def test_tokens_never_appear_in_the_console_log(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "console.log"
    env = {"EHI_DATA_DIR": str(tmp_path), "EHI_LOG_LEVEL": "DEBUG"}
    args = ["--port", str(port), "--with-sandbox", "--out-dir", str(tmp_path / "out")]
    base = f"http://127.0.0.1:{port}"
    with (
        running(
            ehi_command("sources", "console", *args), env, ready_url=f"{base}/", log_path=log_path
        ),
        httpx.Client(base_url=base, timeout=15) as http,
    ):
        redirect = consent(_start(http))
        landing = http.get("/callback", params=redirect)
        assert landing.status_code == 303
        session = landing.headers["location"]
        access = http.get(f"{session}/reveal/access").text
        refresh = http.get(f"{session}/reveal/refresh").text
        assert len(access) > 16 and len(refresh) > 16
        assert http.post(f"{session}/patient").status_code == 200
        assert http.post(f"{session}/sync").status_code == 200
        deadline = time.monotonic() + 30
        while 'id="sync-done"' not in http.get(f"{session}/sync").text:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    log = log_path.read_text()
    assert "console authorized" in log and "console sync finished" in log
    assert access not in log
    assert refresh not in log
    assert redirect["code"] not in log
