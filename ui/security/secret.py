"""The secret that signs session cookies: the same for every dashboard process of one database.

From the setting `STEPDECK_SESSION_SECRET` when it is set; else, on PostgreSQL (where several dashboard
processes share a database, on several hosts), the one kept in the database, made by the first process;
else (SQLite: one host) a file readable by its owner only, made on first start.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from engine import auth, logs
from engine.db import connected
from engine.settings import Settings
from models.schema import is_postgres

SESSION_SECRET = "session"  # its name among the database's shared secrets

log = logs.logger(__name__)


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


async def session_secret(settings: Settings) -> str:
    """The secret of this server's session cookies (see the module's docstring for where it comes from)."""
    if settings.session_secret:
        return settings.session_secret.reveal()
    if is_postgres(settings.db_url):
        async with connected(settings.db_url, apply_migrations=False):
            return await auth.shared_secret(SESSION_SECRET)
    return storage_secret(settings.secret_file)
