"""Database set-up: Tortoise configuration from a URL, SQLite tuning, migrations."""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tortoise import Tortoise
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.connection import connections

from models.errors import DatabaseUnavailable
from models.migrator import apply_pending
from models.schema import TORTOISE_PARAMS, dsn, is_postgres, migration_lock

DEFAULT_DB_URL = "sqlite://data/stepdeck.db"
MODEL_MODULES = ["models.tables"]
MIGRATIONS_MODULE = "models.migrations"

# WAL lets page reads proceed while the engine writes; NORMAL is crash-safe in WAL (only power
# loss can drop the last commits); the busy timeout makes a second process wait for the write
# lock instead of failing at once.
SQLITE_PRAGMAS = {"journal_mode": "WAL", "synchronous": "NORMAL", "busy_timeout": "10000", "foreign_keys": "ON"}

log = logging.getLogger(f"stepdeck.{__name__}")  # the namespace of engine/logs.py, which models/ may not import


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


# Tortoise keeps the schema, migrations and a few simple reads and writes; the engine and the pages use
# pools of their own (engine/db). Its default pool of 5 would hold connections that stay idle, and every
# process counts against PostgreSQL's max_connections: 2 unless the URL says (`?maxsize=`).
TORTOISE_PG_POOL = {"minsize": "1", "maxsize": "2"}


def tortoise_config(db_url: str) -> dict[str, Any]:
    connection = with_sqlite_pragmas(db_url) if is_sqlite(db_url) else _postgres_connection(db_url)
    return {
        "connections": {"default": connection},
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


def _postgres_connection(db_url: str) -> dict[str, Any]:
    """Tortoise's connection to PostgreSQL: its own parameters (pool sizes) from the URL, and the URL's
    libpq ones (`sslmode`…) through the DSN that `models.pg_client` connects with."""
    parts = urlsplit(db_url)
    own = {**TORTOISE_PG_POOL, **{k: v for k, v in parse_qsl(parts.query) if k in TORTOISE_PARAMS}}
    config = expand_db_url(urlunsplit(parts._replace(scheme="postgres", query=urlencode(own))))
    config["engine"] = "models.pg_client"
    config["credentials"]["dsn"] = dsn(db_url)
    return config


def check_url(db_url: str, *, must_exist: bool = False) -> None:
    """Refuse a URL this process cannot use, before anything is created; `must_exist` for commands
    that inspect a database (`check`, `sweep`), which must not create an empty one."""
    if is_postgres(db_url):
        return  # a server: whether it answers is found out on connecting
    if not is_sqlite(db_url):
        scheme = urlsplit(db_url).scheme or db_url.partition(":")[0]
        raise DatabaseUnavailable(
            f"unsupported database URL (scheme {scheme!r}): use sqlite://PATH or postgresql://USER@HOST:PORT/DB"
        )
    path = sqlite_path(db_url)
    if path is None:
        raise DatabaseUnavailable(
            "an in-memory SQLite database cannot be shared by the engine's connections: use a file path"
        )
    if must_exist and not path.is_file():
        raise DatabaseUnavailable(f"no database at {path}: check the path, or create it with `main.py migrate`")
    if path.exists():
        _probe(path)


def frozen_flags(fd: int) -> bool:
    """True when the open file is immutable or append-only (`chattr +i`/`+a`; Linux, else False).
    SQLite maps the `-shm` file into memory, and the kernel answers a write into the mapping of an
    immutable file with SIGBUS, which kills the process: the file must be noticed before SQLite
    touches it, so that the operation fails instead."""
    flags = array.array("l", [0])
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
    except OSError:
        return False
    return bool(flags[0] & (_FS_IMMUTABLE_FL | _FS_APPEND_FL))


_FS_IOC_GETFLAGS = 0x80086601  # Linux: _IOR('f', 1, long)
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


def _probe(path: Path) -> None:
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if frozen_flags(fd):
                raise DatabaseUnavailable(
                    f"the database file {name} is immutable or append-only (chattr): it cannot be used"
                )
        finally:
            os.close(fd)
    # Tortoise deadlocks on its own connection lock when the file is not a database: ask SQLite first.
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DatabaseUnavailable(f"cannot read the database at {path}: {exc}") from exc


def prepare_location(db_url: str) -> None:
    """Create the directory of a SQLite file on first use, so a fresh clone needs no set-up."""
    path = sqlite_path(db_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


async def migrate(db_url: str) -> list[str]:
    """Apply pending migrations, each with its record in one transaction (on PostgreSQL, one process at a
    time under an advisory lock); returns the names of those applied. Leaves Tortoise closed."""
    check_url(db_url)
    prepare_location(db_url)
    config = tortoise_config(db_url)
    try:
        async with migration_lock(db_url):
            await Tortoise.init(config=config, init_connections=False)
            return await apply_pending(connections.get("default"), config["apps"])
    finally:
        await Tortoise.close_connections()


async def open_db(db_url: str) -> None:
    """Connect Tortoise for this process (tasks, threads' loops and pages share it)."""
    prepare_location(db_url)
    await Tortoise.init(config=tortoise_config(db_url), _enable_global_fallback=True)


async def close_db() -> None:
    await Tortoise.close_connections()


# For the `tortoise` command line (makemigrations, history): `tortoise -c models.db.TORTOISE_ORM ...`
TORTOISE_ORM = tortoise_config(DEFAULT_DB_URL)
