"""The sign-in form, its submission, and sign-out: plain HTML and redirects, no websocket needed."""

from __future__ import annotations

import html
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from engine import auth
from engine.auth import LockedOut
from ui.security.body import BodyTooLarge
from ui.security.identity import principal
from ui.security.sessions import renew


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
    except (ValueError, BodyTooLarge):
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
    await renew(request, who)
    return RedirectResponse(next_path, status_code=303)


async def logout(request: Request) -> Response:
    """Sign out (a POST only: the gate refuses a cross-origin one, so another site cannot sign people out)."""
    who = principal(request)
    await renew(request)
    if who.via == "session":
        await auth.audit("sign_out", who.name, None, request.client.host if request.client else None)
    return RedirectResponse("/login", status_code=303)
