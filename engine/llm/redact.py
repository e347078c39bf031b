"""Keeping model endpoint credentials out of what people and logs see.

- `redact_url`: a base URL as shown in pages and the API (no user info, query or fragment).
- `redact_urls`: every URL in a text with its user info and query values masked; installed on every log
  record of the process (`install_log_redaction`), so the HTTP client's own INFO line
  (`HTTP Request: POST https://host/v1/chat/completions?sig=…`) cannot carry a signature or a password.
- `KeyScrubber`: masks the API key in a text, also an echo of it in another case or cut short
  (a server quoting the first 20 characters of the key it was sent, upper-cased).
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"
MIN_ECHO = 8  # the shortest run of the key's characters taken for an echo of it (shorter keys: the whole key)
_URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>`]+")
_installed = threading.Lock()
_factory_installed = False


def redact_url(url: str) -> str:
    """A URL without user info, query or fragment: safe to show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def split_query(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its query, and the query's parameters (sent as parameters on every request)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), dict(parse_qsl(parts.query))


def has_userinfo(url: str) -> bool:
    return "@" in urlsplit(url).netloc


def _mask_url(match: re.Match[str]) -> str:
    url = match.group(0)
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" not in netloc and not parts.query and not parts.fragment:
        return url  # nothing to hide: left exactly as written
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(f"{name}={MASK}" if value else name for name, value in parse_qsl(parts.query, True))
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_urls(text: str) -> str:
    """The text with every URL's user info and query values masked."""
    return _URL_RE.sub(_mask_url, text) if "://" in text else text


def install_log_redaction() -> None:
    """Mask URLs in every log record made from now on in this process (idempotent)."""
    global _factory_installed
    with _installed:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: leave it to the handler to report
                return record
            if "://" in message:
                redacted = redact_urls(message)
                if redacted != message:
                    record.msg, record.args = redacted, None
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


class KeyScrubber:
    """Masks every run of at least MIN_ECHO characters of the key, in any case, wherever it appears."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.width = min(MIN_ECHO, len(key))
        lowered = key.lower()
        self.grams = {lowered[i : i + self.width] for i in range(len(lowered) - self.width + 1)} if key else set()

    def __call__(self, text: str) -> str:
        if not self.grams or len(text) < self.width:
            return text
        lowered = text.lower()
        masked = [False] * len(text)
        for i in range(len(text) - self.width + 1):
            if lowered[i : i + self.width] in self.grams:
                masked[i : i + self.width] = [True] * self.width
        if not any(masked):
            return text
        out: list[str] = []
        for i, char in enumerate(text):
            if not masked[i]:
                out.append(char)
            elif i == 0 or not masked[i - 1]:
                out.append(MASK)
        return "".join(out)
