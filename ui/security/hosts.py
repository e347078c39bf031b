"""Which hosts and origins a request may come with, and which addresses a server may listen on."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import Scope

from engine import auth
from engine.settings import Settings

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


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


class HostPolicy:
    """The names this server answers to, and the same-origin rule for requests that change state."""

    def __init__(self, settings: Settings) -> None:
        extra = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
        # Off the local machine any name may point here (sign-in protects it); on it, only local
        # names: a web page elsewhere cannot reach a local server through a DNS name of its own.
        self.any_host = not is_loopback(settings.host) or "*" in extra
        self.hosts = LOOPBACK_NAMES | {settings.host.lower()} | extra

    def refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        """(status, reason) for a request with an unknown host or a foreign origin, else None."""
        host = hostname(headers.get("host", ""))
        if not self.any_host and host not in self.hosts:
            return 400, f"unknown host {host!r}: this server answers to {', '.join(sorted(self.hosts))}"
        state_changing = scope["type"] == "websocket" or scope["method"] not in ("GET", "HEAD", "OPTIONS")
        origin = headers.get("origin")
        if state_changing and origin and origin != "null":
            if _hostport(urlsplit(origin).netloc) != _hostport(headers.get("host", "")):
                return 403, f"cross-origin request refused (origin {origin})"
        elif state_changing and origin == "null":
            return 403, "cross-origin request refused (origin null)"
        return None


def hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _hostport(netloc: str) -> str:
    return netloc.strip().lower()
