"""The gate every request passes: host and origin checks, size limits, sign-in, security headers.

One ASGI middleware sees every HTTP request and websocket of the app (pages, `/api`, the event
streams, NiceGUI's socket.io), so nothing can be reached around it.
"""

from __future__ import annotations

import contextlib
import functools
from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import auth
from engine.auth import LOCAL, Principal
from engine.settings import Settings
from ui.security.body import MAX_BODY_BYTES, BodyTooLarge, LimitedReceive, declared_too_large
from ui.security.hosts import HostPolicy, is_loopback
from ui.security.sessions import SessionCache, signed_in_as

OPEN_PATHS = {"/api/health", "/login", "/logout", "/favicon.ico"}
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


class Gate:
    def __init__(self, app: ASGIApp, settings: Settings, sessions: SessionCache) -> None:
        self.app = app
        self.settings = settings
        self.sessions = sessions  # the dashboard app's: a sign-out through one gate holds in the other
        self.policy = HostPolicy(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = self.policy.refusal(scope, headers)
        if problem is None and scope["type"] == "http" and declared_too_large(headers.get("content-length")):
            problem = 413, f"request body over {MAX_BODY_BYTES:,} bytes"
        if problem is not None:
            await refuse(scope, receive, send, *problem)
            return
        path = scope["path"]
        who = await self._principal(scope, headers)
        if who is None and not _is_open(path):
            if scope["type"] == "http" and scope["method"] == "GET" and _is_page(path):
                target = "/login" + (f"?next={quote(path)}" if path != "/" else "")
                await RedirectResponse(target, status_code=303)(scope, receive, with_headers(send, CSP))
                return
            await refuse(scope, receive, send, 401, "sign in first (or send Authorization: Bearer <token>)")
            return
        scope.setdefault("state", {})["principal"] = who or LOCAL
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        started = False
        secured = with_headers(send, DOCS_CSP if path in ("/docs", "/redoc") else CSP)
        body = LimitedReceive(receive)

        async def sending(message: Message) -> None:
            nonlocal started
            if body.exceeded:
                return  # the app's own answer to a cut-off body (FastAPI's is a 400): the 413 below replaces it
            started = started or message["type"] == "http.response.start"
            await secured(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, body, sending)
        if body.exceeded and not started:
            await refuse(scope, receive, send, 413, f"request body over {MAX_BODY_BYTES:,} bytes")

    async def _principal(self, scope: Scope, headers: Headers) -> Principal | None:
        if not await self.sessions.sign_in_enabled():
            # No account (the last one was removed while serving the network): this machine only.
            client = scope.get("client")
            if self.policy.any_host and not (client and is_loopback(client[0])):
                return None
            return LOCAL
        authorization = headers.get("authorization", "")
        # Tokens are for the API; pages and their websocket belong to a signed-in browser.
        if authorization.lower().startswith("bearer ") and scope["path"].startswith(("/api/", "/openapi.json")):
            client = scope.get("client")
            token = authorization[7:].strip()
            return await auth.token_principal(token, self.sessions.token_uses, client[0] if client else None)
        session = self._session_user(scope)
        if session is None:
            return None
        who = await self.sessions.user(session[0])
        return who if who is not None and who.epoch == session[1] else None

    def _session_user(self, scope: Scope) -> tuple[str, str | None] | None:
        """The signed-in name of this browser and the account epoch it signed in under."""
        browser = (scope.get("session") or {}).get("id")
        if not browser:
            return None
        if scope["type"] == "http":
            name, epoch = signed_in_as()
            if name:
                self.sessions.sessions[browser] = (name, epoch)
            else:
                self.sessions.sessions.pop(browser, None)
        return self.sessions.sessions.get(browser)


def _is_open(path: str) -> bool:
    # NiceGUI's own scripts and styles are public; a client's uploads and downloads are not.
    return path in OPEN_PATHS or (path.startswith("/_nicegui/") and not path.startswith("/_nicegui/client/"))


def _is_page(path: str) -> bool:
    return not path.startswith(("/api/", "/_nicegui", "/openapi.json"))


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    """Answer a refused request: a JSON error (HTTP) or a policy-violation close (websocket)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    error = {401: "unauthorized", 403: "forbidden", 413: "too_large"}.get(status, "invalid")
    response = JSONResponse({"error": error, "message": message}, status_code=status)
    if status == 401:
        response.headers["www-authenticate"] = "Bearer"
    await response(scope, receive, with_headers(send, CSP))


def with_headers(send: Send, csp: str) -> Send:
    """`send` adding the security headers (CSP, no sniffing, no framing) to every response."""
    added = _security_headers(csp)

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {k.lower() for k, _ in headers}
            headers.extend(header for header in added if header[0] not in present)
            message["headers"] = headers
        await send(message)

    return sending


@functools.cache
def _security_headers(csp: str) -> tuple[tuple[bytes, bytes], ...]:
    """Encoded once per policy, not once per response."""
    return (
        (b"content-security-policy", csp.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
        (b"cross-origin-opener-policy", b"same-origin"),
    )
