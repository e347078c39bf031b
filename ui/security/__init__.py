"""Security of the dashboard and the API, by job:

- `gate`: the ASGI middleware every request passes (host and origin checks, the body limit, sign-in,
  security headers); `hosts`: which names and origins are accepted, where a server may listen;
  `body`: the request body limit;
- `sessions`: who a browser is signed in as (NiceGUI's user storage under the signed session cookie),
  a short cache of account state, a new session at sign-in and sign-out;
- `identity`: who makes a request or uses a page, and whether they may act;
- `login`: the sign-in form and sign-out; `secret`: the cookie-signing secret (a setting, the database's, or a file).

Sign-in is on as soon as one account exists; without accounts the server only serves the local machine
(see `bind_problem`). Scripts send `Authorization: Bearer <token>`. Health (`/api/health`) stays open.
"""

from __future__ import annotations

from nicegui import app

from engine.settings import Settings
from ui.security.gate import Gate
from ui.security.hosts import bind_problem, is_loopback
from ui.security.identity import acting, current, may_act, principal
from ui.security.login import login_page, login_submit, logout
from ui.security.secret import session_secret, storage_secret
from ui.security.sessions import SessionCache

__all__ = [
    "Gate",
    "SessionCache",
    "acting",
    "bind_problem",
    "current",
    "install",
    "is_loopback",
    "may_act",
    "principal",
    "session_secret",
    "storage_secret",
]


def install(settings: Settings) -> None:
    """Put the gate in front of everything and add the sign-in routes; the app's session cache is made
    here, new for every app (`app.state.sessions`)."""
    sessions = app.state.sessions = SessionCache()
    app.add_middleware(Gate, settings=settings, sessions=sessions)
    app.add_route("/login", login_page, methods=["GET"], include_in_schema=False)
    app.add_route("/login", login_submit, methods=["POST"], include_in_schema=False)
    app.add_route("/logout", logout, methods=["POST"], include_in_schema=False)
