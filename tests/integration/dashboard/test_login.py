"""Login, sessions, CSRF and logout of the dashboard."""

from __future__ import annotations

import pytest

from ehi_bridge.app import create_api
from ehi_bridge.auth.service import disable_user
from ehi_bridge.dashboard.security import SESSION_COOKIE
from tests.integration.dashboard.conftest import Dash
from tests.integration.dashboard.helpers import (
    PASSWORD,
    USERNAME,
    TestClient,
    csrf_from,
    login,
)

PAGES = ["/dashboard", "/dashboard/connections", "/dashboard/events", "/dashboard/failures"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_a_browser_to_login(dash: Dash, path: str) -> None:
    response = dash.client.get(path, headers={"accept": "text/html"}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/dashboard/login?next=")


def test_htmx_and_json_requests_get_401(dash: Dash) -> None:
    htmx = dash.client.get("/dashboard/connections", headers={"hx-request": "true"})
    assert htmx.status_code == 401
    assert htmx.headers["hx-redirect"] == "/dashboard/login"
    as_json = dash.client.get("/dashboard", headers={"accept": "application/json"})
    assert as_json.status_code == 401


def test_login_redirects_to_next_and_sets_a_safe_cookie(dash: Dash) -> None:
    page = dash.client.get("/dashboard/login?next=/dashboard/events")
    response = dash.client.post(
        "/dashboard/login",
        data={
            "username": USERNAME,
            "password": PASSWORD,
            "csrf_token": csrf_from(page.text),
            "next": "/dashboard/events",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/events"
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "=")
    )
    lowered = cookie.lower()
    assert "httponly" in lowered
    assert "samesite=lax" in lowered
    assert "path=/dashboard" in lowered
    assert dash.client.get("/dashboard/events").status_code == 200


def test_next_must_stay_on_the_dashboard(dash: Dash) -> None:
    page = dash.client.get("/dashboard/login")
    response = dash.client.post(
        "/dashboard/login",
        data={
            "username": USERNAME,
            "password": PASSWORD,
            "csrf_token": csrf_from(page.text),
            "next": "//evil.example/",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/dashboard"


def test_wrong_password_is_refused(dash: Dash) -> None:
    page = dash.client.get("/dashboard/login")
    response = dash.client.post(
        "/dashboard/login",
        data={
            "username": USERNAME,
            "password": "wrong-password",
            "csrf_token": csrf_from(page.text),
        },
        follow_redirects=False,
    )
    assert response.status_code == 401
    assert "Wrong username or password" in response.text
    assert SESSION_COOKIE not in dash.client.cookies
    follow = dash.client.get("/dashboard", follow_redirects=False)
    assert follow.status_code == 303


def test_unknown_user_is_refused(dash: Dash) -> None:
    page = dash.client.get("/dashboard/login")
    response = dash.client.post(
        "/dashboard/login",
        data={"username": "nobody", "password": PASSWORD, "csrf_token": csrf_from(page.text)},
    )
    assert response.status_code == 401


def test_login_without_csrf_is_forbidden(dash: Dash) -> None:
    dash.client.get("/dashboard/login")
    response = dash.client.post(
        "/dashboard/login", data={"username": USERNAME, "password": PASSWORD}
    )
    assert response.status_code == 403


def test_repeated_failures_are_rate_limited(dash: Dash) -> None:
    page = dash.client.get("/dashboard/login")
    token = csrf_from(page.text)
    statuses = [
        dash.client.post(
            "/dashboard/login",
            data={"username": USERNAME, "password": f"wrong-{i}", "csrf_token": token},
        ).status_code
        for i in range(6)
    ]
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429
    # Even the right password is refused while blocked.
    blocked = dash.client.post(
        "/dashboard/login",
        data={"username": USERNAME, "password": PASSWORD, "csrf_token": token},
    )
    assert blocked.status_code == 429


def test_tampered_cookie_is_not_a_session(dash: Dash) -> None:
    login(dash.client)
    value = dash.client.cookies.get(SESSION_COOKIE)
    assert value
    dash.client.cookies.set(SESSION_COOKIE, value[:-2] + "xx", path="/dashboard")
    response = dash.client.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303


def test_post_without_csrf_is_forbidden(dash: Dash) -> None:
    login(dash.client)
    event_id = dash.seeded.parked_event_id
    response = dash.client.post("/dashboard/events/replay", data={"ids": str(event_id)})
    assert response.status_code == 403
    wrong = dash.client.post(
        "/dashboard/events/replay", data={"ids": str(event_id), "csrf_token": "nope"}
    )
    assert wrong.status_code == 403
    logout = dash.client.post("/dashboard/logout")
    assert logout.status_code == 403


def test_cross_site_post_is_forbidden_even_with_the_token(dash: Dash) -> None:
    csrf = login(dash.client)
    response = dash.client.post(
        "/dashboard/logout", data={"csrf_token": csrf}, headers={"sec-fetch-site": "cross-site"}
    )
    assert response.status_code == 403


def test_logout_ends_the_session_even_for_a_kept_cookie(dash: Dash) -> None:
    csrf = login(dash.client)
    kept = dash.client.cookies.get(SESSION_COOKIE)
    response = dash.client.post(
        "/dashboard/logout", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/dashboard/login")
    assert dash.client.get("/dashboard", follow_redirects=False).status_code == 303
    assert kept
    dash.client.cookies.set(SESSION_COOKIE, kept, path="/dashboard")
    assert dash.client.get("/dashboard", follow_redirects=False).status_code == 303


def test_disabled_user_loses_the_session(dash: Dash) -> None:
    from ehi_bridge.auth.service import disable_user

    login(dash.client)
    with dash.db.session() as session:
        disable_user(session, USERNAME)
    assert dash.client.get("/dashboard", follow_redirects=False).status_code == 303


def test_failures_from_one_client_do_not_lock_the_user_out_elsewhere(
    dash: Dash, database_url: str
) -> None:
    def attempt(client: TestClient, password: str) -> int:
        token = csrf_from(client.get("/dashboard/login").text)
        data = {"username": USERNAME, "password": password, "csrf_token": token}
        return client.post("/dashboard/login", data=data, follow_redirects=False).status_code

    attacker = TestClient(dash.client.app, client=("203.0.113.9", 5000))
    assert [attempt(attacker, f"wrong-{i}") for i in range(6)][-1] == 429
    operator = TestClient(dash.client.app, client=("198.51.100.7", 5000))
    assert attempt(operator, PASSWORD) == 303


def test_logout_survives_a_restart_and_other_processes(dash: Dash) -> None:
    login(dash.client)
    cookie = dash.client.cookies.get(SESSION_COOKIE)
    assert cookie
    # Another process (or this one after a restart): same secret, same database.
    other = TestClient(create_api(dash.settings, dash.db))
    other.cookies.set(SESSION_COOKIE, cookie, path="/dashboard")
    assert other.get("/dashboard", follow_redirects=False).status_code == 200
    csrf = csrf_from(dash.client.get("/dashboard").text)
    dash.client.post("/dashboard/logout", data={"csrf_token": csrf}, follow_redirects=False)
    restarted = TestClient(create_api(dash.settings, dash.db))
    restarted.cookies.set(SESSION_COOKIE, cookie, path="/dashboard")
    response = restarted.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/dashboard/login")


def test_disabling_a_user_ends_their_sessions_everywhere(dash: Dash) -> None:
    login(dash.client)
    cookie = dash.client.cookies.get(SESSION_COOKIE)
    assert cookie
    with dash.db.session() as session:
        disable_user(session, USERNAME)
    fresh = TestClient(create_api(dash.settings, dash.db))
    fresh.cookies.set(SESSION_COOKIE, cookie, path="/dashboard")
    assert fresh.get("/dashboard", follow_redirects=False).status_code == 303
