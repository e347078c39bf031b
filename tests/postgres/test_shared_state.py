"""Several dashboard processes on one PostgreSQL database share what a person's sign-in depends on:
failed sign-ins are counted in the database (five wrong passwords lock a name whichever process they went
to) and session cookies are signed with one secret (a session begun on one process holds on another)."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.served import Server, Workspace
from tests.integration.test_auth import PASSWORDS, WRONG_PASSWORD, add_user, browser, sign_in


@contextlib.contextmanager
def two_dashboards(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[tuple[Server, Server]]:
    ws = Workspace(tmp_path, {}, env=env)
    ws.migrate_for_serve()
    add_user(ws, "alice")
    # The second as if on another host: a secret file of its own (only the database is shared, and the
    # directory of NiceGUI's user storage, which stands in for its Redis storage or sticky sessions).
    elsewhere = copy.copy(ws)
    elsewhere.env = {**ws.env, "STEPDECK_SECRET_FILE": str(tmp_path / "elsewhere" / "secret.key")}
    servers = (Server(ws, log_name="one.log"), Server(elsewhere, extra_args=["--no-engine"], log_name="two.log"))
    try:
        for server in servers:
            server.start()
        yield servers
    except BaseException:
        for server in servers:
            print(f"--- {server.log_path.name} ---\n{server.log_tail(60)}")
        raise
    finally:
        for server in servers:
            server.close()


@pytest.mark.timeout(300)  # starts two servers: slow on a loaded machine
def test_five_wrong_passwords_spread_over_two_dashboards_lock_the_name_on_both(tmp_path: Path) -> None:
    with two_dashboards(tmp_path) as (one, two), browser(one, "127.0.0.2") as a, browser(two, "127.0.0.3") as b:
        for attempt in range(5):
            client = (a, b)[attempt % 2]
            r = sign_in(client, "alice", f"{WRONG_PASSWORD}-{attempt}")
            assert r.status_code == 401, f"attempt {attempt + 1}: {r.status_code}"
        for client in (a, b):
            r = sign_in(client, "alice", PASSWORDS["alice"])
            assert r.status_code == 429, f"{r.status_code}: {r.text[:200]}"
            assert client.get("/api/me").status_code == 401


@pytest.mark.timeout(300)  # starts two servers: slow on a loaded machine
def test_a_session_begun_on_one_dashboard_holds_on_the_other(tmp_path: Path) -> None:
    with two_dashboards(tmp_path) as (one, two), browser(one) as client:
        assert sign_in(client, "alice", PASSWORDS["alice"]).status_code == 303
        assert client.get("/api/me").json()["name"] == "alice"
        cookies = dict(client.cookies)
        with browser(two) as other:
            other.cookies.update(cookies)
            # The storage behind the cookie is written by the first process shortly after the sign-in.
            deadline = time.monotonic() + 30
            while (r := other.get("/api/me")).status_code != 200:
                assert time.monotonic() < deadline, f"the other dashboard did not accept the session: {r.text}"
                time.sleep(0.05)
            assert (r.json()["name"], r.json()["via"]) == ("alice", "session")


@pytest.mark.timeout(300)  # starts two servers: slow on a loaded machine
def test_the_session_secret_setting_wins_over_the_database(tmp_path: Path) -> None:
    with two_dashboards(tmp_path, env={"STEPDECK_SESSION_SECRET": "s" * 48}) as (one, _):
        assert one.ws.sql("SELECT name FROM shared_secrets") == []
        assert not (tmp_path / "secret.key").exists()
