"""Database set-up: Tortoise configuration from a URL, SQLite tuning, migrations."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from tortoise import Tortoise
from tortoise.migrations.api import migrate as tortoise_migrate

from models.schema import migration_lock

DEFAULT_DB_URL = "sqlite://data/stepdeck.db"
MODEL_MODULES = ["models.tables"]
MIGRATIONS_MODULE = "models.migrations"

# WAL lets page reads proceed while the engine writes; NORMAL is crash-safe in WAL (only power
# loss can drop the last commits); the busy timeout makes a second process wait for the write
# lock instead of failing at once.
SQLITE_PRAGMAS = {"journal_mode": "WAL", "synchronous": "NORMAL", "busy_timeout": "10000", "foreign_keys": "ON"}

log = logging.getLogger(__name__)


def is_sqlite(db_url: str) -> bool:
    return db_url.startswith("sqlite:")


def _raw_sqlite_path(db_url: str) -> str:
    parts = urlsplit(db_url)
    path = parts.netloc + parts.path
    # `sqlite:////abs/file.db` (the SQLAlchemy spelling) makes Tortoise hang without an error.
    return "/" + path.lstrip("/") if path.startswith("//") else path


def sqlite_path(db_url: str) -> Path | None:
    """The file behind a `sqlite://` URL, or None for another database or `:memory:`."""
    if not is_sqlite(db_url):
        return None
    path = _raw_sqlite_path(db_url)
    return None if path in ("", ":memory:") else Path(path)


def with_sqlite_pragmas(db_url: str) -> str:
    """The URL in the form Tortoise expects (`sqlite://<path>`) with our pragmas; the user's win."""
    parts = urlsplit(db_url)
    query = dict(SQLITE_PRAGMAS)
    query.update(dict(parse_qsl(parts.query)))
    return f"sqlite://{_raw_sqlite_path(db_url)}?{urlencode(query)}"


def tortoise_config(db_url: str) -> dict[str, Any]:
    url = with_sqlite_pragmas(db_url) if is_sqlite(db_url) else db_url
    return {
        "connections": {"default": url},
        "apps": {
            "models": {
                "models": MODEL_MODULES,
                "default_connection": "default",
                "migrations": MIGRATIONS_MODULE,
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def prepare_location(db_url: str) -> None:
    """Create the directory of a SQLite file on first use, so a fresh clone needs no set-up."""
    path = sqlite_path(db_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


async def migrate(db_url: str) -> list[str]:
    """Apply pending migrations; returns the names of those applied. Leaves Tortoise closed."""
    prepare_location(db_url)
    applied: list[str] = []

    def progress(event: str, app_label: str, name: str) -> None:
        if event == "apply_done":
            applied.append(f"{app_label}.{name}")

    try:
        async with migration_lock(db_url):  # PostgreSQL: one migrating process at a time
            await tortoise_migrate(config=tortoise_config(db_url), progress=progress)
    finally:
        await Tortoise.close_connections()
    return applied


async def open_db(db_url: str) -> None:
    """Connect Tortoise for this process (tasks, threads' loops and pages share it)."""
    prepare_location(db_url)
    await Tortoise.init(config=tortoise_config(db_url), _enable_global_fallback=True)


async def close_db() -> None:
    await Tortoise.close_connections()


# For the `tortoise` command line (makemigrations, history): `tortoise -c models.db.TORTOISE_ORM ...`
TORTOISE_ORM = tortoise_config(DEFAULT_DB_URL)
