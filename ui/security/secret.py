"""The secret that signs session cookies, kept in a file readable by its owner only."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)


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
