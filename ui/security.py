"""The gate every request passes: host and origin checks, size limits, sign-in, security headers.

One ASGI middleware sees every HTTP request and websocket of the app (pages, `/api`, the event
streams, NiceGUI's socket.io), so nothing can be reached around it. Sign-in is on as soon as one
account exists; without accounts the server only serves the local machine (see `bind_problem`).

A browser signs in through a plain form (`/login`, no websocket needed); the signed-in name is kept
in NiceGUI's user storage, under the browser's signed session cookie. Scripts send
`Authorization: Bearer <token>`. Health (`/api/health`) stays open.
"""

from __future__ import annotations

import contextlib
import html
import ipaddress
import logging
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from nicegui import app
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from engine import auth
from engine.auth import LOCAL, LockedOut, Principal
from engine.errors import Forbidden
from engine.settings import Settings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1024 * 1024  # requests carry inputs and choices, never files
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
OPEN_PATHS = {"/api/health", "/login", "/logout", "/favicon.ico"}
SESSION_KEY = "stepdeck_user"
EPOCH_KEY = "stepdeck_epoch"
CACHE_S = 2.0  # how long an account's state (exists, enabled, role) is trusted without a new read
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; media-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
# The API documentation page loads Swagger UI from its CDN.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "frame-ancestors 'none'; object-src 'none'"
)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def bind_problem(settings: Settings) -> str | None:
    """Why the server must not start on this address, or None: off the local machine, sign-in is required."""
    if is_loopback(settings.host) or await auth.sign_in_enabled():
        return None
    return (
        f"refusing to serve on {settings.host}: anyone on the network could use Stepdeck, and no account exists.\n"
        "Create one first (it turns sign-in on), then start again:\n"
        "    uv run main.py users add NAME            (asks for the password; --role viewer for read-only)\n"
        "or serve this machine only: --host 127.0.0.1"
    )


def storage_secret(path: Path) -> str:
    """The secret that signs session cookies: made on first start, kept readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole to a temporary file, then linked into place: a second server starting at the
        # same moment either finds the complete file or loses the race to link, never an empty one.
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(secrets.token_urlsafe(48))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s was readable by others; its permissions are now 0600", path)
    secret = path.read_text(encoding="utf-8").strip()
    if not secret:
        raise RuntimeError(f"{path} is empty: delete it and start again (a new secret is made)")
    return secret


class _Cache:
    """Short-lived answers to "is sign-in on?" and "who is this user now?" (a disable takes effect within CACHE_S)."""

    def __init__(self) -> None:
        self.enabled: tuple[float, bool] | None = None
        self.users: dict[str, tuple[float, Principal | None]] = {}
        # browser id -> (signed-in name, account epoch): websockets have no user storage to read
        self.sessions: dict[str, tuple[str, str | None]] = {}

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


cache = _Cache()


def principal(request: Request) -> Principal:
    """Who makes this request (set by the gate; the local user when sign-in is off)."""
    found = request.scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else LOCAL


SIGNED_OUT = Principal("signed out", "viewer", "session")


def current() -> Principal:
    """Who uses this page (in page functions and their event handlers). The local user only while
    sign-in is known to be off; a tab whose browser signed out (in another tab) may no longer act."""
    try:
        name, epoch = app.storage.user.get(SESSION_KEY), app.storage.user.get(EPOCH_KEY)
    except (RuntimeError, AssertionError):  # no storage: sign-in is off in this process
        name = epoch = None
    if not name:
        return LOCAL if cache.enabled is not None and not cache.enabled[1] else SIGNED_OUT
    cached = cache.users.get(name)
    if cached and cached[1] is not None and cached[1].epoch == epoch:
        return cached[1]
    return SIGNED_OUT if cached else Principal(name, "viewer", "session")


def _stored_epoch() -> str | None:
    try:
        epoch = app.storage.user.get(EPOCH_KEY)
    except (RuntimeError, AssertionError):
        return None
    return str(epoch) if epoch else None


def may_act() -> bool:
    """Whether this page shows the person actions (viewers only look; the actions check again)."""
    return current().can_act


async def acting() -> str:
    """The actor of an action taken on a page, after checking the account may still act (Forbidden if not)."""
    if not await cache.sign_in_enabled():
        return "ui"  # sign-in is off: the dashboard on this machine
    who = current()
    if who is SIGNED_OUT or who.via == "local":
        raise Forbidden("this browser signed out: sign in again to act")
    fresh = await cache.user(who.name)
    if fresh is None or fresh.epoch != _stored_epoch():
        raise Forbidden(f"the account {who.name} was disabled, removed or given a new password: sign in again")
    if not fresh.can_act:
        raise Forbidden(f"{who.name} is a viewer: only operators can start, cancel, retry, resume or select")
    return fresh.actor


class Gate:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        extra = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
        # Off the local machine any name may point here (sign-in protects it); on it, only local
        # names: a web page elsewhere cannot reach a local server through a DNS name of its own.
        self.any_host = not is_loopback(settings.host) or "*" in extra
        self.hosts = LOOPBACK_NAMES | {settings.host.lower()} | extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = self._refusal(scope, headers)
        if problem is not None:
            await _refuse(scope, receive, send, *problem)
            return
        path = scope["path"]
        who = await self._principal(scope, headers)
        if who is None and not _is_open(path):
            if scope["type"] == "http" and scope["method"] == "GET" and _is_page(path):
                target = "/login" + (f"?next={quote(path)}" if path != "/" else "")
                await RedirectResponse(target, status_code=303)(scope, receive, _with_headers(send, CSP))
                return
            await _refuse(scope, receive, send, 401, "sign in first (or send Authorization: Bearer <token>)")
            return
        scope.setdefault("state", {})["principal"] = who or LOCAL
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        started = False
        secured = _with_headers(send, DOCS_CSP if path in ("/docs", "/redoc") else CSP)
        body = _Limited(receive)

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if body.exceeded:
                return  # the app's own answer to a cut-off body (FastAPI's is a 400): the 413 below replaces it
            started = started or message["type"] == "http.response.start"
            await secured(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, body, sending)
        if body.exceeded and not started:
            await _refuse(scope, receive, send, 413, f"request body over {MAX_BODY_BYTES:,} bytes")

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        host = _hostname(headers.get("host", ""))
        if not self.any_host and host not in self.hosts:
            return 400, f"unknown host {host!r}: this server answers to {', '.join(sorted(self.hosts))}"
        state_changing = scope["type"] == "websocket" or scope["method"] not in ("GET", "HEAD", "OPTIONS")
        origin = headers.get("origin")
        if state_changing and origin and origin != "null":
            if _hostport(urlsplit(origin).netloc) != _hostport(headers.get("host", "")):
                return 403, f"cross-origin request refused (origin {origin})"
        elif state_changing and origin == "null":
            return 403, "cross-origin request refused (origin null)"
        length = headers.get("content-length")
        if scope["type"] == "http" and length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return 413, f"request body over {MAX_BODY_BYTES:,} bytes"
        return None

    async def _principal(self, scope: Scope, headers: Headers) -> Principal | None:
        if not await cache.sign_in_enabled():
            # No account (the last one was removed while serving the network): this machine only.
            client = scope.get("client")
            if self.any_host and not (client and is_loopback(client[0])):
                return None
            return LOCAL
        authorization = headers.get("authorization", "")
        # Tokens are for the API; pages and their websocket belong to a signed-in browser.
        if authorization.lower().startswith("bearer ") and scope["path"].startswith(("/api/", "/openapi.json")):
            client = scope.get("client")
            return await auth.token_principal(authorization[7:].strip(), client[0] if client else None)
        session = self._session_user(scope)
        if session is None:
            return None
        who = await cache.user(session[0])
        return who if who is not None and who.epoch == session[1] else None

    @staticmethod
    def _session_user(scope: Scope) -> tuple[str, str | None] | None:
        """The signed-in name of this browser and the account epoch it signed in under."""
        browser = (scope.get("session") or {}).get("id")
        if not browser:
            return None
        if scope["type"] == "http":
            try:
                name, epoch = app.storage.user.get(SESSION_KEY), app.storage.user.get(EPOCH_KEY)
            except (RuntimeError, AssertionError):
                name = epoch = None
            if name:
                cache.sessions[browser] = (str(name), str(epoch) if epoch else None)
            else:
                cache.sessions.pop(browser, None)
        return cache.sessions.get(browser)


def _is_open(path: str) -> bool:
    # NiceGUI's own scripts and styles are public; a client's uploads and downloads are not.
    return path in OPEN_PATHS or (path.startswith("/_nicegui/") and not path.startswith("/_nicegui/client/"))


def _is_page(path: str) -> bool:
    return not path.startswith(("/api/", "/_nicegui", "/openapi.json"))


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _hostport(netloc: str) -> str:
    return netloc.strip().lower()


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    error = {401: "unauthorized", 403: "forbidden", 413: "too_large"}.get(status, "invalid")
    response = JSONResponse({"error": error, "message": message}, status_code=status)
    if status == 401:
        response.headers["www-authenticate"] = "Bearer"
    await response(scope, receive, _with_headers(send, CSP))


class _Limited:
    """A body sent in chunks (no Content-Length) may not grow past the limit either.

    Reading past it raises `_TooLarge`, which the app may catch (FastAPI turns any error while
    reading a body into a 400): `exceeded` lets the gate answer 413 all the same.
    """

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.seen = 0
        self.exceeded = False

    async def __call__(self) -> MutableMapping[str, Any]:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > MAX_BODY_BYTES:
                self.exceeded = True
                raise _TooLarge
        return message


class _TooLarge(Exception):
    pass


def _with_headers(send: Send, csp: str) -> Send:
    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {k.lower() for k, _ in headers}
            for name, value in (
                (b"content-security-policy", csp.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"x-frame-options", b"DENY"),
                (b"referrer-policy", b"same-origin"),
                (b"cross-origin-opener-policy", b"same-origin"),
            ):
                if name not in present:
                    headers.append((name, value))
            message["headers"] = headers
        await send(message)

    return sending


# --- sign-in pages ------------------------------------------------------------------------------


def _safe_next(target: str) -> str:
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def login_html(next_path: str, error: str = "", name: str = "") -> str:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Stepdeck</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f1f5f9; display: grid; place-items: center; min-height: 100vh;
       margin: 0; }}
form {{ background: white; padding: 2rem; border-radius: .5rem; box-shadow: 0 1px 4px #0002; width: 20rem; }}
h1 {{ font-size: 1.25rem; margin: 0 0 1rem; }} label {{ display: block; margin: .75rem 0 .25rem; font-size: .9rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; border: 1px solid #cbd5e1; border-radius: .25rem; }}
button {{ margin-top: 1.25rem; width: 100%; padding: .6rem; background: #1e293b; color: white; border: 0;
         border-radius: .25rem; font-size: 1rem; cursor: pointer; }}
.error {{ color: #b91c1c; font-size: .9rem; }}
</style></head>
<body><form method="post" action="/login">
<h1>Stepdeck</h1>{message}
<input type="hidden" name="next" value="{html.escape(next_path)}">
<label for="name">Name</label>
<input id="name" name="name" autocomplete="username" value="{html.escape(name)}" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form></body></html>"""


async def login_page(request: Request) -> Response:
    if principal(request).via == "session":
        return RedirectResponse(_safe_next(request.query_params.get("next", "/")), status_code=303)
    return Response(login_html(_safe_next(request.query_params.get("next", "/"))), media_type="text/html")


async def login_submit(request: Request) -> Response:
    try:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
    except (ValueError, _TooLarge):
        return Response(login_html("/", "The form could not be read."), status_code=400, media_type="text/html")
    name = (form.get("name") or [""])[0].strip()
    password = (form.get("password") or [""])[0]
    next_path = _safe_next((form.get("next") or ["/"])[0])
    address = request.client.host if request.client else "unknown"
    try:
        who = await auth.sign_in(name, password, address)
    except LockedOut as exc:
        return Response(login_html(next_path, str(exc), name), status_code=429, media_type="text/html")
    if who is None:
        page = login_html(next_path, "Wrong name or password.", name)
        return Response(page, status_code=401, media_type="text/html")
    await _new_session(request)
    app.storage.user[SESSION_KEY] = who.name
    app.storage.user[EPOCH_KEY] = who.epoch
    cache.users.pop(who.name, None)
    return RedirectResponse(next_path, status_code=303)


async def _new_session(request: Request) -> None:
    """Sign the browser's current session out and give it a new one. At sign-in, a session cookie
    obtained before (cookies are shared by every port of a host) is then never signed in; at sign-out,
    copies of the old cookie stay signed out."""
    if "session" not in request.scope:
        return
    carried: dict[str, Any] = {}
    with contextlib.suppress(RuntimeError, AssertionError):  # no user storage (no storage secret)
        app.storage.user.pop(SESSION_KEY, None)
        app.storage.user.pop(EPOCH_KEY, None)
        carried = dict(app.storage.user)  # preferences (dark mode) follow the browser
    old = request.session.get("id")
    if old:
        cache.sessions.pop(old, None)
    fresh = str(uuid.uuid4())
    request.session["id"] = fresh
    # NiceGUI makes a session's user storage when a request of it arrives; this one arrived under the
    # old id (the same call its middleware makes).
    await app.storage._create_user_storage(fresh)
    app.storage.user.update(carried)


async def logout(request: Request) -> Response:
    who = principal(request)
    await _new_session(request)
    if who.via == "session":
        await auth.audit("sign_out", who.name, None, request.client.host if request.client else None)
    return RedirectResponse("/login", status_code=303)


def install(settings: Settings) -> None:
    """Put the gate in front of everything and add the sign-in routes."""
    app.add_middleware(Gate, settings=settings)
    app.add_route("/login", login_page, methods=["GET"], include_in_schema=False)
    app.add_route("/login", login_submit, methods=["POST"], include_in_schema=False)
    # A POST only: the gate refuses a cross-origin one, so another site cannot sign people out.
    app.add_route("/logout", logout, methods=["POST"], include_in_schema=False)
