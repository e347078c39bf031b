"""Who makes a request or uses a page, and whether they may act."""

from __future__ import annotations

from starlette.requests import Request

from engine.auth import LOCAL, Principal
from engine.errors import Forbidden
from ui.security.sessions import app_cache, signed_in_as

SIGNED_OUT = Principal("signed out", "viewer", "session")


def principal(request: Request) -> Principal:
    """Who makes this request (set by the gate; the local user when sign-in is off)."""
    found = request.scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else LOCAL


def current() -> Principal:
    """Who uses this page (in page functions and their event handlers). The local user only while
    sign-in is known to be off; a tab whose browser signed out (in another tab) may no longer act."""
    name, epoch = signed_in_as()
    cache = app_cache()
    if not name:
        return LOCAL if cache.enabled is not None and not cache.enabled[1] else SIGNED_OUT
    cached = cache.users.get(name)
    if cached and cached[1] is not None and cached[1].epoch == epoch:
        return cached[1]
    return SIGNED_OUT if cached else Principal(name, "viewer", "session")


def may_act() -> bool:
    """Whether this page shows the person actions (viewers only look; the actions check again)."""
    return current().can_act


async def acting() -> str:
    """The actor of an action taken on a page, after checking the account may still act (Forbidden if not)."""
    cache = app_cache()
    if not await cache.sign_in_enabled():
        return "ui"  # sign-in is off: the dashboard on this machine
    who = current()
    if who is SIGNED_OUT or who.via == "local":
        raise Forbidden("this browser signed out: sign in again to act")
    fresh = await cache.user(who.name)
    if fresh is None or fresh.epoch != signed_in_as()[1]:
        raise Forbidden(f"the account {who.name} was disabled, removed or given a new password: sign in again")
    if not fresh.can_act:
        raise Forbidden(f"{who.name} is a viewer: only operators can start, cancel, retry, resume or select")
    return fresh.actor
