"""Who a browser is signed in as: NiceGUI's per-browser user storage (under the signed session
cookie), a short-lived cache of account state, and renewing the session at sign-in and sign-out.

The one place that reaches NiceGUI's storage internals (`app.storage._users`, whether a session's storage
is loaded, and `_create_user_storage`, to give a renewed session its storage), of the pinned version:
re-check them when the pin moves (`tests/integration/test_sessions.py` fails if they change)."""

from __future__ import annotations

import time
import uuid
from collections.abc import MutableMapping
from typing import Any

from nicegui import app
from nicegui.storage import request_contextvar
from starlette.requests import Request

from engine import auth
from engine.auth import Principal

SESSION_KEY = "stepdeck_user"
EPOCH_KEY = "stepdeck_epoch"
CACHE_S = 2.0  # how long an account's state (exists, enabled, role) is trusted without a new read


class SessionCache:
    """Short-lived answers to "is sign-in on?" and "who is this user now?" (a disable takes effect within CACHE_S).
    One per dashboard app (`ui.security.install` makes it, `app.state.sessions`), shared by its gates."""

    def __init__(self) -> None:
        self.enabled: tuple[float, bool] | None = None
        self.users: dict[str, tuple[float, Principal | None]] = {}
        # browser id -> (signed-in name, account epoch): websockets have no user storage to read
        self.sessions: dict[str, tuple[str, str | None]] = {}
        self.token_uses: dict[int, float] = {}  # token id -> when its use was last recorded (`auth.token_principal`)

    async def sign_in_enabled(self) -> bool:
        now = time.monotonic()
        if self.enabled is None or now - self.enabled[0] > CACHE_S:
            self.enabled = (now, await auth.sign_in_enabled())
        return self.enabled[1]

    async def user(self, name: str) -> Principal | None:
        now = time.monotonic()
        cached = self.users.get(name)
        if cached is None or now - cached[0] > CACHE_S:
            cached = self.users[name] = (now, await auth.principal_of(name))
        return cached[1]

    def forget(self) -> None:
        self.enabled = None
        self.users.clear()


def app_cache() -> SessionCache:
    """The session cache of the dashboard app (made with it by `ui.security.install`)."""
    cache: SessionCache = app.state.sessions
    return cache


def user_storage() -> MutableMapping[str, Any] | None:
    """This browser's user storage, or None where there is none: no storage secret, no browser request
    in this context, or a session whose storage NiceGUI has not loaded yet (it loads it when the
    session's request reaches its middleware, after the gate)."""
    request = request_contextvar.get()
    if request is None or "session" not in request.scope:
        return None
    browser = request.session.get("id")
    # What `app.storage.user` asserts; asked first instead of catching its AssertionError.
    if browser is None or browser not in app.storage._users:
        return None
    return app.storage.user


def signed_in_as() -> tuple[str | None, str | None]:
    """The name and account epoch this browser signed in with, (None, None) if it did not."""
    storage = user_storage()
    if storage is None:
        return None, None
    name, epoch = storage.get(SESSION_KEY), storage.get(EPOCH_KEY)
    return (str(name) if name else None), (str(epoch) if epoch else None)


async def renew(request: Request, who: Principal | None = None) -> None:
    """Sign the browser's current session out and give it a new one, signed in as `who` if given.
    At sign-in, a session cookie obtained before (cookies are shared by every port of a host) is then
    never signed in; at sign-out, copies of the old cookie stay signed out."""
    if "session" not in request.scope:
        return
    carried: dict[str, Any] = {}
    old_storage = user_storage()
    if old_storage is not None:
        old_storage.pop(SESSION_KEY, None)
        old_storage.pop(EPOCH_KEY, None)
        carried = dict(old_storage)  # preferences (dark mode) follow the browser
    cache = app_cache()
    old = request.session.get("id")
    if old:
        cache.sessions.pop(old, None)
    fresh = str(uuid.uuid4())
    request.session["id"] = fresh
    # NiceGUI makes a session's user storage when a request of it arrives; this one arrived under the
    # old id (the same call its middleware makes).
    await app.storage._create_user_storage(fresh)
    storage = app.storage.user
    storage.update(carried)
    if who is not None:
        storage[SESSION_KEY] = who.name
        storage[EPOCH_KEY] = who.epoch
        cache.users.pop(who.name, None)
