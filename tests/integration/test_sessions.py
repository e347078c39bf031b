"""Sessions against a real server with an account: a new session at sign-in and at sign-out, sign-out
only by a same-origin POST, and the client's address taken from X-Forwarded-For only when the proxy is
configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.served import Server, Workspace, serving

PASSWORD = "correct horse battery staple"


def _workspace(directory: Path, **env: str) -> Workspace:
    ws = Workspace(directory, env=env)
    ws.add_user("alice", PASSWORD)
    return ws


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(_workspace(tmp_path_factory.mktemp("sessions"))) as s:
        yield s


def _browser(server: Server, cookies: httpx.Cookies | None = None) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=15.0, cookies=cookies)


def _sign_in(client: httpx.Client, headers: dict[str, str] | None = None) -> None:
    r = client.post("/login", data={"name": "alice", "password": PASSWORD, "next": "/"}, headers=headers)
    assert r.status_code == 303, r.text


def _signed_in(client: httpx.Client) -> bool:
    r = client.get("/api/me")
    return r.status_code == 200 and r.json()["via"] == "session"


def test_a_cookie_obtained_before_sign_in_is_not_signed_in_after(server: Server) -> None:
    with _browser(server) as attacker:
        assert attacker.get("/login").status_code == 200
        planted = httpx.Cookies(attacker.cookies)
        assert planted, "the login page gives a session cookie"
        with _browser(server, planted) as victim:  # the attacker's cookie, planted in the victim's browser
            _sign_in(victim)
            assert _signed_in(victim)
            assert victim.cookies.get("session") != planted.get("session")
        assert not _signed_in(attacker)


def test_sign_out_renews_the_session_and_signs_out_copies_of_the_old_cookie(server: Server) -> None:
    with _browser(server) as browser:
        _sign_in(browser)
        with _browser(server, httpx.Cookies(browser.cookies)) as copy:
            assert _signed_in(copy)
            r = browser.post("/logout")
            assert (r.status_code, r.headers["location"]) == (303, "/login")
            assert not _signed_in(browser)
            assert not _signed_in(copy)


def test_sign_out_is_a_same_origin_post(server: Server) -> None:
    with _browser(server) as browser:
        _sign_in(browser)
        assert browser.get("/logout").status_code == 405  # a link or an image elsewhere cannot sign out
        r = browser.post("/logout", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        assert _signed_in(browser)
        assert browser.post("/logout", headers={"Origin": server.base_url}).status_code == 303
        assert not _signed_in(browser)


def _sign_in_addresses(ws: Workspace) -> list[str]:
    return [r["address"] for r in ws.sql("SELECT address FROM audit WHERE action = 'sign_in' ORDER BY id")]


def test_x_forwarded_for_is_believed_only_from_a_configured_proxy(server: Server, tmp_path: Path) -> None:
    forged = {"X-Forwarded-For": "203.0.113.9"}
    with _browser(server) as browser:
        _sign_in(browser, forged)
    assert _sign_in_addresses(server.ws)[-1] == "127.0.0.1"

    ws = _workspace(tmp_path, STEPDECK_TRUSTED_PROXIES="127.0.0.1")
    with serving(ws) as proxied, _browser(proxied) as browser:
        _sign_in(browser, forged)
    assert _sign_in_addresses(ws) == ["203.0.113.9"]
