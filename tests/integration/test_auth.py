"""Sign-in and the gate in front of everything, against real `main.py serve` processes.

The first account and token are made with the terminal commands (`users add`, `tokens add`), as an
admin would, their output checked; the other accounts and tokens of the shared server directly through
`engine.auth`, which those commands call (same rows, same audit entries, one process instead of eight).
Everything else goes over HTTP and websockets from outside. One server with accounts is shared
by most tests (each uses its own account, token or client address where it changes state the others
rely on); a server without accounts checks the Host defence, and one on 0.0.0.0 the bind refusal.

The brute-force guard counts failures per name and per client address: tests that fail a sign-in on
purpose connect from their own loopback address (127.0.0.x), so they never lock the others out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from engine import auth
from engine.db import connected
from tests.integration.served import Server, Workspace, free_port, serving

STEPS_MODULE = """
def drafts(ctx):
    return [f"draft-{i}" for i in range(ctx.alternatives)]


def use(ctx):
    return "used:" + ",".join(str(v) for v in ctx.outputs.values())
"""
WORKFLOWS = {
    "auth-pick": """
        name: auth-pick
        steps:
          - key: gen
            call: authsteps:drafts
            alternatives: 3
            select: human
          - key: use
            call: authsteps:use
        """,
}

ROLES = {
    "alice": "operator",  # the operator most tests act as
    "victor": "viewer",
    "dora": "operator",  # disabled by a test
    "remy": "viewer",  # removed by a test
    "bruno": "operator",  # brute-forced by a test
}
# None of these may show up anywhere but in the requests that carry them.
PASSWORDS = {name: f"{name}-Pa55word-{hashlib.sha256(name.encode()).hexdigest()[:8]}" for name in ROLES}
WRONG_PASSWORD = "not-the-Pa55word-9f0a1c"
TOKENS = (("alice", "ci"), ("alice", "revocable"), ("victor", "ci"), ("dora", "ci"), ("remy", "ci"))
FOREIGN = "http://evil.example"
PAGES = ("/", "/runs/1", "/workflows", "/monitoring")
NICEGUI_POLLING = "/_nicegui_ws/socket.io/?EIO=4&transport=polling"
NICEGUI_WEBSOCKET = "/_nicegui_ws/socket.io/?EIO=4&transport=websocket"
SETTLE_S = 5.0  # a disabled or removed account's session ends within 2 s (the gate's cache); tokens at once


# --- helpers -----------------------------------------------------------------------------------------------


def add_user(ws: Workspace, name: str, role: str = "operator", password: str | None = None) -> None:
    done = ws.cli("users", "add", name, "--role", role, input=(password or PASSWORDS[name]) + "\n")
    assert done.returncode == 0, f"users add {name}: {done.stdout}{done.stderr}"


def add_token(ws: Workspace, user: str, name: str) -> tuple[str, int]:
    """The new token (printed alone on stdout) and its id (told on stderr)."""
    done = ws.cli("tokens", "add", user, name)
    assert done.returncode == 0, f"tokens add {user} {name}: {done.stdout}{done.stderr}"
    token = done.stdout.strip()
    assert token.startswith("sdk_") and len(token) > 40, done.stdout
    assert token not in done.stderr
    told = re.match(rf"token (\d+) \({re.escape(name)}\) for {user}: shown once", done.stderr)
    assert told, done.stderr
    return token, int(told.group(1))


def add_directly(
    ws: Workspace, users: dict[str, str], tokens: tuple[tuple[str, str], ...]
) -> dict[tuple[str, str], tuple[str, int]]:
    """Accounts (with their PASSWORDS) and tokens made through `engine.auth` on the workspace's database."""

    async def make() -> dict[tuple[str, str], tuple[str, int]]:
        async with connected(ws.db_url):
            for name, role in users.items():
                await auth.add_user(name, PASSWORDS[name], role)
            made = {}
            for user, name in tokens:
                token, row = await auth.add_token(user, name)
                made[user, name] = (token, row.id)
            return made

    return asyncio.run(make())


def browser(server: Server, address: str = "127.0.0.1") -> httpx.Client:
    """A client that keeps cookies like a browser, connecting from `address` (the guard counts per address)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.base_url, timeout=15.0, transport=transport)


def sign_in(client: httpx.Client, name: str, password: str, next_path: str = "/") -> httpx.Response:
    return client.post("/login", data={"name": name, "password": password, "next": next_path})


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = SETTLE_S) -> float:
    """Poll `check` until it holds; the seconds it took, or fail naming `what`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - started


def cookie_header(client: httpx.Client) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)


def open_socket(server: Server, cookie: str | None = None, origin: str | None = None) -> str:
    """The engine.io handshake frame of NiceGUI's websocket; InvalidStatus when the upgrade is refused."""
    url = f"ws://127.0.0.1:{server.port}{NICEGUI_WEBSOCKET}"
    headers = {"Cookie": cookie} if cookie else None
    with ws_connect(
        url, origin=Origin(origin) if origin else None, additional_headers=headers, proxy=None, open_timeout=10
    ) as conn:
        frame = conn.recv(timeout=10)
    return frame if isinstance(frame, str) else frame.decode()


def refused_status(server: Server, cookie: str | None = None, origin: str | None = None) -> int:
    with pytest.raises(InvalidStatus) as refused:
        open_socket(server, cookie, origin)
    return refused.value.response.status_code


@dataclass
class Deck:
    """The shared server with accounts, its workspace and the tokens made for them."""

    ws: Workspace
    server: Server
    tokens: dict[tuple[str, str], str]
    token_ids: dict[tuple[str, str], int]

    @property
    def url(self) -> str:
        return self.server.base_url

    def bearer(self, user: str, name: str = "ci") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user, name]}"}

    def api(self, user: str, name: str = "ci") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.bearer(user, name), timeout=15.0)

    @contextlib.contextmanager
    def session(self, user: str, address: str = "127.0.0.1") -> Iterator[httpx.Client]:
        """A browser signed in as the user through the form."""
        with browser(self.server, address) as client:
            answer = sign_in(client, user, PASSWORDS[user])
            assert answer.status_code == 303, f"sign-in of {user}: {answer.status_code} {answer.text[:300]}"
            yield client

    @contextlib.contextmanager
    def acting_as(self, user: str, via: str) -> Iterator[httpx.Client]:
        """A client of the user, signed in through the form (`session`) or sending their `ci` token."""
        with contextlib.ExitStack() as stack:
            yield stack.enter_context(self.session(user) if via == "session" else self.api(user))

    def audit(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/audit", params={"limit": 1000}, headers=self.bearer("alice"), timeout=15.0)
        assert r.status_code == 200, r.text
        entries: list[dict[str, Any]] = r.json()
        return entries

    def events(self, run_id: int) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/runs/{run_id}/events?follow=false", headers=self.bearer("alice"), timeout=15.0)
        assert r.status_code == 200, r.text
        events: list[dict[str, Any]] = r.json()
        return events


@pytest.fixture(scope="module")
def deck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deck]:
    ws = Workspace(tmp_path_factory.mktemp("auth"), WORKFLOWS, {"authsteps": STEPS_MODULE})
    first_user, first_token = next(iter(ROLES)), TOKENS[0]
    add_user(ws, first_user, ROLES[first_user])
    made = {first_token: add_token(ws, *first_token)}
    made.update(add_directly(ws, {n: r for n, r in ROLES.items() if n != first_user}, TOKENS[1:]))
    server = Server(ws)
    try:
        server.start()
        yield Deck(ws, server, {k: v[0] for k, v in made.items()}, {k: v[1] for k, v in made.items()})
    except BaseException:
        print(f"--- log of main.py serve on port {server.port} ---\n{server.log_tail(200)}")
        raise
    finally:
        server.close()


@pytest.fixture(scope="module")
def alice(deck: Deck) -> Iterator[httpx.Client]:
    """A browser signed in as the operator alice."""
    with deck.session("alice") as client:
        yield client


@pytest.fixture(scope="module")
def waiting_run(deck: Deck) -> int:
    """A run waiting for a person to pick one of the drafts (no test may change it)."""
    with deck.api("alice") as client:
        r = client.post("/api/runs", json={"workflow": "auth-pick"})
        assert r.status_code == 201, r.text
        run_id: int = r.json()["id"]
    wait_run(deck, run_id, "waiting")
    return run_id


def wait_run(deck: Deck, run_id: int, status: str, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        run: dict[str, Any] = httpx.get(f"{deck.url}/api/runs/{run_id}", headers=deck.bearer("alice")).json()
        if run["status"] == status:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} stayed {run['status']} ({run['error']}), expected {status}")
        time.sleep(0.05)


def concrete(template: str, run_id: int) -> str:
    """An OpenAPI path with values for its parameters: the run, its step, its workflow (1 for anything else)."""
    values = {"run_id": str(run_id), "key": "gen", "name": "auth-pick"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "1"), template)


def entries(deck: Deck, action: str, **match: str) -> list[dict[str, Any]]:
    return [e for e in deck.audit() if e["action"] == action and all(e[k] == v for k, v in match.items())]


# --- anonymous requests are refused ------------------------------------------------------------------------


def test_anonymous_pages_and_docs_redirect_to_sign_in(deck: Deck) -> None:
    with browser(deck.server) as anonymous:
        for path in (*PAGES, "/docs"):
            r = anonymous.get(path)
            assert r.status_code == 303, f"{path}: {r.status_code}"
            expected = "/login" if path == "/" else f"/login?next={path}"
            assert r.headers["location"] == expected, path
        form = anonymous.get("/login")
        assert form.status_code == 200
        assert 'name="password"' in form.text
        assert anonymous.get("/openapi.json").status_code == 401


def test_every_api_route_refuses_anonymous_and_forged_tokens_except_health(deck: Deck, waiting_run: int) -> None:
    with deck.api("alice") as client:
        r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    paths: dict[str, dict[str, Any]] = r.json()["paths"]
    assert {"/api/runs", "/api/runs/{run_id}/events", "/api/me", "/api/audit", "/api/workflows/reload"} <= set(paths)
    checked = 0
    for template, operations in paths.items():
        path = concrete(template, waiting_run)
        for method in operations:
            for headers in ({}, {"Authorization": "Bearer sdk_forged-0123456789abcdefghijklmnopqrstuvwxyz"}):
                body: dict[str, Any] | None = {} if method == "post" else None
                r = httpx.request(method, f"{deck.url}{path}", headers=headers, json=body, timeout=15.0)
                checked += 1
                if path == "/api/health":
                    assert (r.status_code, r.json()) == (200, {"status": "ok"})
                    continue
                assert r.status_code == 401, f"{method.upper()} {path} {headers}: {r.status_code} {r.text[:200]}"
                assert r.json()["error"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
    assert checked >= 2 * 19


def test_anonymous_event_stream_and_nicegui_socket_are_refused(
    deck: Deck, alice: httpx.Client, waiting_run: int
) -> None:
    headers = {"Accept": "text/event-stream"}
    with httpx.stream("GET", f"{deck.url}/api/runs/{waiting_run}/events", headers=headers, timeout=15.0) as r:
        assert r.status_code == 401
        assert "text/event-stream" not in r.headers["content-type"]
    assert httpx.get(f"{deck.url}{NICEGUI_POLLING}", timeout=15.0).status_code == 401
    assert refused_status(deck.server) == 403
    assert refused_status(deck.server, origin=deck.url) == 403
    # The same requests with a session get through: the refusals above are about sign-in.
    with alice.stream("GET", f"/api/runs/{waiting_run}/events", headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
    assert alice.get(NICEGUI_POLLING).status_code == 200
    assert open_socket(deck.server, cookie_header(alice), origin=deck.url).startswith('0{"sid"')


def test_unknown_host_is_refused_also_when_signed_in(deck: Deck) -> None:
    with deck.api("alice") as client:
        assert client.get("/api/me").status_code == 200
        r = client.get("/api/me", headers={"Host": "evil.example"})
    assert r.status_code == 400
    assert "unknown host" in r.json()["message"]


# --- roles ---------------------------------------------------------------------------------------------------


def actions(client: httpx.Client, run_id: int) -> dict[str, Callable[[], httpx.Response]]:
    return {
        "start": lambda: client.post("/api/runs", json={"workflow": "auth-pick"}),
        "cancel": lambda: client.post(f"/api/runs/{run_id}/cancel"),
        "rerun": lambda: client.post(f"/api/runs/{run_id}/steps/gen/rerun"),
        "select": lambda: client.post(f"/api/runs/{run_id}/steps/gen/select", json={"index": 0}),
        "resume": lambda: client.post(f"/api/runs/{run_id}/resume"),
        "reload": lambda: client.post("/api/workflows/reload"),
    }


@pytest.mark.parametrize("via", ["session", "token"])
def test_viewer_reads_runs_but_every_action_is_forbidden(deck: Deck, waiting_run: int, via: str) -> None:
    events_before = deck.events(waiting_run)
    with deck.acting_as("victor", via) as viewer:
        assert viewer.get("/api/me").json() == {
            "name": "victor",
            "role": "viewer",
            "via": via,
            "token": "ci" if via == "token" else None,
        }
        runs = viewer.get("/api/runs")
        assert runs.status_code == 200
        count = len(runs.json())
        assert waiting_run in [run["id"] for run in runs.json()]
        assert viewer.get(f"/api/runs/{waiting_run}").json()["status"] == "waiting"
        assert viewer.get(f"/api/runs/{waiting_run}/events?follow=false").status_code == 200
        for name, act in actions(viewer, waiting_run).items():
            r = act()
            assert r.status_code == 403, f"{name}: {r.status_code} {r.text[:300]}"
            assert r.json()["error"] == "forbidden"
            assert "viewer" in r.json()["message"]
        assert len(viewer.get("/api/runs").json()) == count
    assert wait_run(deck, waiting_run, "waiting")["status"] == "waiting"
    assert deck.events(waiting_run) == events_before


@pytest.mark.parametrize("via", ["session", "token"])
def test_operator_does_everything_and_is_recorded_as_the_actor(deck: Deck, via: str) -> None:
    actor = "alice" if via == "session" else "alice (token ci)"
    with deck.acting_as("alice", via) as operator:
        started = operator.post("/api/runs", json={"workflow": "auth-pick"})
        assert started.status_code == 201, started.text
        run_id: int = started.json()["id"]
        assert started.json()["actor"] == actor
        act = actions(operator, run_id)
        wait_run(deck, run_id, "waiting")
        for name, then in (("cancel", "cancelled"), ("resume", "waiting"), ("select", "completed")):
            r = act[name]()
            assert r.status_code == 200, f"{name}: {r.status_code} {r.text[:300]}"
            wait_run(deck, run_id, then)
        r = act["rerun"]()
        assert r.status_code == 200, f"rerun: {r.status_code} {r.text[:300]}"
        wait_run(deck, run_id, "waiting")
        assert act["reload"]().status_code == 200
    recorded = [e for e in deck.events(run_id) if e["kind"] == "action"]
    assert len(recorded) == 5, recorded  # start, cancel, resume, select, rerun
    assert {e["actor"] for e in recorded} == {actor}
    assert {e["actor"] for e in deck.events(run_id) if e["actor"]} == {actor}


# --- revocation, disabling, removal ---------------------------------------------------------------------------


def test_revoked_token_stops_working_at_once_without_a_restart(deck: Deck) -> None:
    with deck.api("alice", "revocable") as revocable, deck.api("alice", "ci") as other:
        assert revocable.get("/api/me").json()["token"] == "revocable"
        revoked = deck.ws.cli("tokens", "revoke", str(deck.token_ids["alice", "revocable"]))
        assert revoked.returncode == 0, revoked.stderr
        r = revocable.get("/api/me")
        assert r.status_code == 401
        assert revocable.get("/api/runs").status_code == 401
        assert other.get("/api/me").status_code == 200  # only that token
    prefix = deck.tokens["alice", "revocable"][:12]
    for action, actor in (("token_added", "admin"), ("token_used", "alice"), ("token_revoked", "admin")):
        found = [e for e in entries(deck, action, actor=actor) if f"revocable ({prefix}…)" in (e["detail"] or "")]
        assert len(found) == 1, f"{action}: {found}"


def test_disabled_user_loses_session_and_tokens_within_seconds(deck: Deck) -> None:
    with deck.session("dora") as session, deck.api("dora") as token:
        assert session.get("/api/me").status_code == 200
        assert token.get("/api/me").status_code == 200
        cookie = cookie_header(session)
        assert open_socket(deck.server, cookie, deck.url).startswith('0{"sid"')
        done = deck.ws.cli("users", "disable", "dora")
        assert done.returncode == 0, done.stderr
        assert token.get("/api/me").status_code == 401  # tokens are checked on every request
        wait_until(lambda: session.get("/api/me").status_code == 401, "the disabled account's session to end")
        assert session.get("/").headers.get("location") == "/login"
        assert session.post("/api/workflows/reload").status_code == 401
        assert refused_status(deck.server, cookie, deck.url) == 403
    with browser(deck.server, "127.0.0.5") as again:
        r = sign_in(again, "dora", PASSWORDS["dora"])
        assert r.status_code == 401
        assert again.get("/api/me").status_code == 401
    assert entries(deck, "user_disabled", detail="dora")


def test_removed_user_loses_session_and_tokens_within_seconds(deck: Deck) -> None:
    with deck.session("remy") as session, deck.api("remy") as token:
        assert session.get("/api/me").json()["name"] == "remy"
        assert token.get("/api/me").json()["name"] == "remy"
        done = deck.ws.cli("users", "remove", "remy")
        assert done.returncode == 0, done.stderr
        assert token.get("/api/me").status_code == 401
        wait_until(lambda: session.get("/api/me").status_code == 401, "the removed account's session to end")
        assert session.get("/api/runs").status_code == 401
        # An account made again under the same name (same password) does not revive the old session.
        done = deck.ws.cli("users", "add", "remy", "--role", "viewer", input=PASSWORDS["remy"] + "\n")
        assert done.returncode == 0, done.stderr
        time.sleep(SETTLE_S / 2)
        assert session.get("/api/me").status_code == 401
    assert entries(deck, "user_removed", detail="remy")
    # A new password ends the sessions signed in with the old one.
    with deck.session("remy") as session:
        assert session.get("/api/me").json()["name"] == "remy"
        done = deck.ws.cli("users", "passwd", "remy", input="remy-New-Pa55word-1\n")
        assert done.returncode == 0, done.stderr
        wait_until(lambda: session.get("/api/me").status_code == 401, "the session of the old password to end")


# --- origins ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["session", "token"])
def test_cross_origin_posts_are_refused_same_origin_posts_work(deck: Deck, via: str) -> None:
    with deck.acting_as("alice", via) as client:
        for origin in (
            FOREIGN,
            "null",
            f"http://127.0.0.1:{deck.server.port + 1}",
            f"https://127.0.0.1:{deck.server.port}x",
        ):
            r = client.post("/api/workflows/reload", headers={"Origin": origin})
            assert r.status_code == 403, f"{origin}: {r.status_code}"
            assert "cross-origin" in r.json()["message"]
        r = client.post("/api/workflows/reload", headers={"Origin": deck.url})
        assert r.status_code == 200, r.text
        assert "auth-pick" in r.json()["workflows"]


def test_sign_in_from_a_foreign_origin_is_refused(deck: Deck) -> None:
    with browser(deck.server) as client:
        data = {"name": "alice", "password": PASSWORDS["alice"], "next": "/"}
        r = client.post("/login", data=data, headers={"Origin": FOREIGN})
        assert r.status_code == 403
        assert client.get("/api/me").status_code == 401
        assert client.post("/login", data=data, headers={"Origin": deck.url}).status_code == 303
        assert client.get("/api/me").json()["name"] == "alice"


def test_websocket_from_a_foreign_origin_is_refused(deck: Deck, alice: httpx.Client) -> None:
    cookie = cookie_header(alice)
    assert open_socket(deck.server, cookie, deck.url).startswith('0{"sid"')
    assert refused_status(deck.server, cookie, FOREIGN) == 403
    assert refused_status(deck.server, cookie, "null") == 403


# --- the sign-in form -----------------------------------------------------------------------------------------


def test_wrong_password_shows_an_error_and_makes_no_session(deck: Deck) -> None:
    with browser(deck.server, "127.0.0.4") as client:
        for name in ("alice", "nobody-by-this-name"):
            r = sign_in(client, name, WRONG_PASSWORD, "/workflows")
            assert r.status_code == 401
            assert r.headers["content-type"].startswith("text/html")
            assert "Wrong name or password." in r.text  # the same for an unknown name: no hint which was wrong
            assert WRONG_PASSWORD not in r.text
            assert client.get("/api/me").status_code == 401
            assert client.get("/workflows").status_code == 303
    assert entries(deck, "sign_in_failed", actor="alice", address="127.0.0.4")


@pytest.mark.parametrize(
    ("asked", "landing"),
    [
        ("/workflows", "/workflows"),
        ("/runs/1?tab=events", "/runs/1?tab=events"),
        ("//evil.example", "/"),
        ("https://evil.example", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
    ],
)
def test_next_only_leads_to_local_paths(deck: Deck, asked: str, landing: str) -> None:
    with browser(deck.server) as client:
        r = sign_in(client, "alice", PASSWORDS["alice"], asked)
        assert (r.status_code, r.headers["location"]) == (303, landing)
        again = client.get("/login", params={"next": asked})  # signed in already: straight on
        assert (again.status_code, again.headers["location"]) == (303, landing)


def test_sign_in_and_sign_out_are_audited(deck: Deck) -> None:
    with browser(deck.server, "127.0.0.6") as client:
        assert sign_in(client, "alice", PASSWORDS["alice"]).status_code == 303
        assert client.get("/api/me").json()["via"] == "session"
        r = client.post("/logout")
        assert (r.status_code, r.headers["location"]) == (303, "/login")
        assert client.get("/api/me").status_code == 401
        assert client.get("/").headers["location"] == "/login"
    assert len(entries(deck, "sign_in", actor="alice", address="127.0.0.6")) == 1
    assert len(entries(deck, "sign_out", actor="alice", address="127.0.0.6")) == 1


def test_five_wrong_passwords_lock_the_name_even_for_the_right_one(deck: Deck) -> None:
    with browser(deck.server, "127.0.0.2") as attacker, browser(deck.server, "127.0.0.3") as elsewhere:
        for attempt in range(5):
            r = sign_in(attacker, "bruno", f"{WRONG_PASSWORD}-{attempt}")
            assert r.status_code == 401, f"attempt {attempt + 1}: {r.status_code}"
        for client in (attacker, elsewhere):  # the name is locked, wherever the next try comes from
            r = sign_in(client, "bruno", PASSWORDS["bruno"])
            assert r.status_code == 429
            wait_s = int(re.search(r"try again in (\d+) s", r.text).group(1))  # type: ignore[union-attr]
            assert 1 <= wait_s <= 30
            assert client.get("/api/me").status_code == 401
        # Not everyone is locked out: another account signs in from another address.
        assert sign_in(elsewhere, "alice", PASSWORDS["alice"]).status_code == 303
    failed = entries(deck, "sign_in_failed", actor="bruno", address="127.0.0.2")
    assert len(failed) == 5
    assert {e["detail"] for e in failed} == {"wrong name or password"}
    assert len(entries(deck, "sign_in_locked", actor="bruno")) == 2
    assert not entries(deck, "sign_in", actor="bruno")


# --- request size, headers -------------------------------------------------------------------------------------


def big_start_body() -> bytes:
    """A run start (valid JSON) of 2 MB: without the limit it would reach the API."""
    return json.dumps({"workflow": "auth-pick", "inputs": {"padding": "x" * 2_000_000}}).encode()


@pytest.mark.parametrize("path", ["/api/runs", "/login"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_request_bodies_over_1_mib_get_413(deck: Deck, path: str, chunked: bool) -> None:
    body = big_start_body()
    content: bytes | Iterator[bytes] = (body[i : i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    kind = "application/json" if path.startswith("/api") else "application/x-www-form-urlencoded"
    # The API needs a token before it reads a body; the sign-in form reads it from anyone.
    with deck.api("alice") if path.startswith("/api") else browser(deck.server) as client:
        r = client.post(path, content=content, headers={"Content-Type": kind})
    assert ("content-length" not in r.request.headers) is chunked
    assert r.status_code == 413, f"{r.status_code} {r.text[:300]}"
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "too_large"


def test_a_declared_oversize_body_is_refused_before_it_is_sent(deck: Deck) -> None:
    head = (
        f"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1:{deck.server.port}\r\nContent-Type: application/json\r\n"
        "Content-Length: 2000000\r\n\r\n{"
    )
    with socket.create_connection(("127.0.0.1", deck.server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""  # the server answers without waiting for the rest of the body
        while b"}" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"too_large"' in answer


def test_security_headers_on_pages_and_api_responses(deck: Deck, alice: httpx.Client, waiting_run: int) -> None:
    with deck.api("alice") as token:
        responses = {
            "page /": alice.get("/"),
            f"page /runs/{waiting_run}": alice.get(f"/runs/{waiting_run}"),
            "page /login": httpx.get(f"{deck.url}/login", timeout=15.0),
            "api runs": token.get("/api/runs"),
            "api 404": token.get("/api/runs/987654"),
            "api 401": httpx.get(f"{deck.url}/api/runs", timeout=15.0),
            "api health": httpx.get(f"{deck.url}/api/health", timeout=15.0),
            "openapi": token.get("/openapi.json"),
            "docs": alice.get("/docs"),
        }
    for what, r in responses.items():
        assert r.status_code in (200, 401, 404), f"{what}: {r.status_code}"
        csp = r.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp, f"{what}: {csp!r}"
        if what != "docs":  # Swagger UI's page has its own policy (it loads from a CDN)
            assert "img-src 'self' data: blob:" in csp, f"{what}: {csp!r}"
        assert r.headers.get("x-content-type-options") == "nosniff", what
        assert r.headers.get("x-frame-options") == "DENY", what


@pytest.mark.sqlite_only  # the secret file; on PostgreSQL the dashboards share a secret kept in the database
def test_session_secret_file_is_made_readable_by_the_owner_only(deck: Deck) -> None:
    secret = deck.ws.dir / "secret.key"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert len(secret.read_text().strip()) >= 32


# --- secrets stay secret (last: it also checks what the tests above left in the log and the database) ---------


def test_passwords_and_tokens_never_appear_in_log_responses_or_database(
    deck: Deck, alice: httpx.Client, waiting_run: int
) -> None:
    secrets = [*PASSWORDS.values(), WRONG_PASSWORD, *deck.tokens.values()]

    def clean(what: str, text: str) -> None:
        for secret in secrets:
            assert secret not in text, f"a password or token in {what}"

    shown: dict[str, str] = {}
    with deck.api("alice") as token, browser(deck.server, "127.0.0.7") as anonymous:
        shown["failed sign-in page"] = sign_in(anonymous, "alice", WRONG_PASSWORD).text
        paths = token.get("/openapi.json").json()["paths"]
        for template, operations in paths.items():
            if "get" not in operations:
                continue
            path = concrete(template, waiting_run)
            for who, client in (("token", token), ("session", alice)):
                shown[f"{who} GET {path}"] = client.get(
                    path, params={"follow": "false"} if "events" in path else {}
                ).text
        for path in (*PAGES, f"/runs/{waiting_run}", "/docs", "/openapi.json"):
            shown[f"page {path}"] = alice.get(path).text
    assert len(shown) > 30
    for what, text in shown.items():
        clean(what, text)
    for command in (("users", "list"), ("tokens", "list")):
        done = deck.ws.cli(*command)
        assert done.returncode == 0
        clean(" ".join(command), done.stdout + done.stderr)
    clean("the server's log", deck.server.log_text())

    tables = sorted(deck.ws.tables())
    assert {"users", "api_tokens", "audit"} <= set(tables)
    for table in tables:
        clean(f"table {table}", repr(deck.ws.sql(f'SELECT * FROM "{table}"')))
    for file in deck.ws.dir.rglob("*"):  # the database file with its WAL, NiceGUI's storage, the secret
        if file.is_file():
            clean(str(file), file.read_bytes().decode("latin-1"))

    users = deck.ws.sql("SELECT name, password_hash FROM users")
    assert "alice" in {u["name"] for u in users}
    for user in users:
        assert user["password_hash"].startswith("$argon2id$"), user["name"]
    stored = {row["token_hash"] for row in deck.ws.sql("SELECT token_hash FROM api_tokens")}
    assert hashlib.sha256(deck.tokens["alice", "ci"].encode()).hexdigest() in stored
    assert stored <= {hashlib.sha256(t.encode()).hexdigest() for t in deck.tokens.values()}


# --- a server without accounts, and one for the network --------------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on 127.0.0.1 without accounts, told of two more names, whose secret file others could read."""
    ws = Workspace(tmp_path_factory.mktemp("local"), env={"STEPDECK_ALLOWED_HOSTS": "stepdeck.test, Other.Test"})
    secret = ws.dir / "secret.key"
    secret.write_text("a-secret-made-by-hand-0123456789abcdef\n")
    secret.chmod(0o644)
    with serving(ws) as server:
        yield server


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example", 400),
        ("evil.example:{port}", 400),
        ("127.0.0.1.evil.example", 400),
        ("localhost.evil.example:{port}", 400),
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("[::1]:{port}", 200),
        ("stepdeck.test:{port}", 200),
        ("other.test", 200),
    ],
)
def test_without_accounts_only_local_and_allowed_host_names_are_served(local: Server, host: str, status: int) -> None:
    """A web page elsewhere cannot reach the local server through a DNS name of its own (DNS rebinding)."""
    headers = {"Host": host.format(port=local.port)}
    for path in ("/api/me", "/"):
        r = local.client.get(path, headers=headers)
        assert r.status_code == status, f"{path} with Host {host}: {r.status_code}"
    if status == 200:
        assert local.client.get("/api/me", headers=headers).json()["via"] == "local"  # sign-in is off
    else:
        assert "unknown host" in r.json()["message"]


@pytest.mark.sqlite_only  # the secret file; on PostgreSQL the dashboards share a secret kept in the database
def test_a_secret_file_readable_by_others_is_made_owner_only(local: Server) -> None:
    secret = local.ws.dir / "secret.key"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert secret.read_text() == "a-secret-made-by-hand-0123456789abcdef\n"  # kept: sessions stay valid
    assert "permissions are now 0600" in local.log_text()


def test_serving_the_network_needs_an_account_then_sign_in(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, WORKFLOWS, {"authsteps": STEPS_MODULE})
    refused = ws.cli("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "refusing to serve on 0.0.0.0" in refused.stderr
    assert "users add NAME" in refused.stderr
    add_user(ws, "olga", "operator", PASSWORDS["alice"])
    with serving(ws, host="0.0.0.0") as server, browser(server) as client:
        assert client.get("/").headers["location"] == "/login"
        assert client.get("/api/runs").status_code == 401
        # Any name may point at a server on the network: sign-in, not the Host check, protects it.
        assert client.get("/api/runs", headers={"Host": "stepdeck.example.org"}).status_code == 401
        assert refused_status(server, origin=server.base_url) == 403
        assert sign_in(client, "olga", PASSWORDS["alice"]).status_code == 303
        assert client.get("/api/me").json() == {"name": "olga", "role": "operator", "via": "session", "token": None}
        assert client.get("/api/runs").status_code == 200
        # The last account removed while serving the network: this machine only, not everyone.
        assert ws.cli("users", "remove", "olga").returncode == 0
        time.sleep(2.5)  # the gate trusts what it read about accounts for 2 s
        assert httpx.get(f"{server.base_url}/api/runs", timeout=5).status_code == 200  # from 127.0.0.1
        address = _outside_address()
        remote = httpx.get(f"http://{address}:{server.port}/api/runs", timeout=5)
        assert remote.status_code == 401, f"a client at {address} was let in without an account"


def _outside_address() -> str:
    """An address of this machine that is not loopback (a client there is "on the network")."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address: str = probe.getsockname()[0]
    assert not address.startswith("127."), "this test needs a network interface besides loopback"
    return address
