"""Notification targets: webhooks (http/https) and Apprise URLs, from the settings and from workflows.

A target URL usually carries a token (a Slack hook, a ntfy password, a mail login): it is never shown,
logged or stored. Deliveries name their target by a fingerprint (to find it again in the configuration)
and a label with the scheme and host only.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from engine.notify.kinds import DEFAULT_EVENTS, EVENTS
from models.errors import StepdeckError

if TYPE_CHECKING:
    from engine.settings import Settings

WEBHOOK, APPRISE = "webhook", "apprise"
_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$", re.IGNORECASE)


class TargetError(StepdeckError, ValueError):
    """A target setting that cannot be used; the message names the variable, never the URL."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    channel: str  # webhook | apprise
    events: tuple[str, ...]

    def __repr__(self) -> str:  # settings and targets get logged: never the URL
        return f"Target({self.label!r}, {self.channel}, {self.events})"

    @property
    def key(self) -> str:
        return fingerprint(self.url)

    @property
    def label(self) -> str:
        return redact(self.url)


def fingerprint(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def redact(url: str) -> str:
    """What may be shown of a target URL: its scheme and host (no user, password, path or query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unreadable URL)"
    scheme = parts.scheme.lower() or "?"
    if scheme in ("http", "https"):
        rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
        return f"{scheme}://{host}{port}{rest}"
    return f"{scheme}://…"  # an Apprise URL's "host" is often the token itself


def channel_of(url: str) -> str:
    return WEBHOOK if url.lower().startswith(("http://", "https://")) else APPRISE


def _split(value: str) -> list[str]:
    return [u for u in re.split(r"[,\s]+", value.strip()) if u]


def env_targets(settings: Settings) -> list[Target]:
    """The targets of STEPDECK_WEBHOOK_URL and STEPDECK_NOTIFY, with the events of STEPDECK_NOTIFY_EVENTS."""
    events = tuple(_split(settings.notify_events)) or DEFAULT_EVENTS
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise TargetError(f"STEPDECK_NOTIFY_EVENTS: unknown event {unknown[0]!r} (known: {', '.join(EVENTS)})")
    targets = []
    for name, value, channel in (
        ("STEPDECK_WEBHOOK_URL", settings.webhook_urls.reveal(), WEBHOOK),
        ("STEPDECK_NOTIFY", settings.notify_urls.reveal(), APPRISE),
    ):
        for i, url in enumerate(_split(value)):
            if not _URL_RE.match(url) or (channel == WEBHOOK and channel_of(url) != WEBHOOK):
                expected = "an http:// or https:// URL" if channel == WEBHOOK else "an Apprise URL (scheme://…)"
                raise TargetError(f"{name}: entry {i + 1} is not {expected}")
            targets.append(Target(url, channel, events))
    return targets


_ENV_URL_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def workflow_targets(notify: Iterable[Mapping[str, Any]], environ: Mapping[str, str] | None = None) -> list[Target]:
    """The targets of a workflow's `notify:` entries (as kept in a run's definition snapshot); a `${NAME}`
    entry is the URL in that environment variable of this process (left out while it is not set)."""
    env = os.environ if environ is None else environ
    targets = []
    for n in notify:
        url = n["url"]
        named = _ENV_URL_RE.match(url)
        if named:
            url = env.get(named[1], "").strip()
            if not _URL_RE.match(url):
                continue
        targets.append(Target(url, channel_of(url), tuple(n["events"])))
    return targets


def targets_for(event: str, targets: Sequence[Target]) -> list[Target]:
    """The targets that get `event`, each once (the same URL configured twice is one target)."""
    chosen: dict[str, Target] = {}
    for t in targets:
        if event in t.events and t.key not in chosen:
            chosen[t.key] = t
    return list(chosen.values())


def scrub(text: str, targets: Iterable[Target]) -> str:
    """`text` (an error message) with every target URL, and its secret-bearing parts, replaced by the label."""
    for t in targets:
        text = text.replace(t.url, t.label)
        parts = urlsplit(t.url)
        for piece in (parts.password, parts.username, parts.query, parts.path if len(parts.path) > 8 else None):
            if piece:
                text = text.replace(piece, "…")
    return text
