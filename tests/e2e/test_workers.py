"""`serve --workers 2` without EHI_SESSION_SECRET: logins and page loads work whichever
process answers (before, each process generated its own secret and most logins bounced)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import ehi_command, free_port, running

pytestmark = pytest.mark.slow

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "a long enough password"


def test_twenty_logins_across_two_workers(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHI_")}
    env["EHI_DATABASE_URL"] = f"sqlite:///{tmp_path / 'ehi.sqlite3'}"
    created = subprocess.run(
        ehi_command("auth", "user", "create", "admin", "--password-stdin"),
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    serve = ehi_command(
        "serve", "--port", str(port), "--workers", "2", "--no-background", "--host", "127.0.0.1"
    )
    with running(serve, env, f"{base}/healthz", tmp_path / "serve.log", timeout=90):
        failures = []
        for attempt in range(20):
            # A new connection each time, so the kernel hands them to either process.
            with httpx.Client(base_url=base, timeout=30) as client:
                page = client.get("/dashboard/login")
                match = CSRF_RE.search(page.text)
                assert page.status_code == 200 and match
                cookies = dict(client.cookies)
            with httpx.Client(base_url=base, timeout=30, cookies=cookies) as client:
                answer = client.post(
                    "/dashboard/login",
                    data={"username": "admin", "password": PASSWORD, "csrf_token": match[1]},
                    follow_redirects=False,
                )
                if answer.status_code != 303:
                    failures.append((attempt, "login", answer.status_code))
                    continue
                cookies = dict(client.cookies)
            for load in range(3):
                with httpx.Client(base_url=base, timeout=30, cookies=cookies) as client:
                    overview = client.get("/dashboard", follow_redirects=False)
                    if overview.status_code != 200:
                        failures.append((attempt, f"load {load}", overview.status_code))
        assert failures == []
