"""Test databases on PostgreSQL, for a run of the suite with `STEPDECK_TEST_DB=postgres`.

One database is migrated once per test process (the template); each test gets a fresh database
copied from it (`CREATE DATABASE … TEMPLATE`, a file copy on the server: tens of milliseconds), and
drops it afterwards; the template is dropped when the process exits. The server is
`STEPDECK_TEST_PG` (default `postgresql://postgres@127.0.0.1:5432/test`: any database of it to
connect to while creating the others).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from engine.db.postgres import _Conn, dsn
from models.db import migrate

ENABLED = os.environ.get("STEPDECK_TEST_DB", "sqlite").lower() in ("postgres", "postgresql")
SERVER = os.environ.get("STEPDECK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# Every database made here is named with this prefix (a CI run sets its own, to find what it leaves).
PREFIX = os.environ.get("STEPDECK_TEST_PG_PREFIX", "stepdeck_test_")

_lock = threading.Lock()
_template: str | None = None


def url_of(name: str) -> str:
    parts = urlsplit(SERVER)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


def _in_thread(work: Callable[[], Awaitable[Any]]) -> Any:
    """Run `work` on a loop of its own (callers may be inside an event loop already)."""
    out: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            out.append(asyncio.run(work()))  # type: ignore[arg-type]
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="stepdeck-pg-admin")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return out[0] if out else None


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(SERVER)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _build() -> str:
    name = f"{PREFIX}tmpl_{os.getpid()}_{secrets.token_hex(3)}"
    _in_thread(lambda: _admin(f'CREATE DATABASE "{name}"'))
    atexit.register(drop, name)
    _in_thread(lambda: migrate(url_of(name)))
    return name


def template() -> str:
    global _template
    with _lock:
        if _template is None:
            _template = _build()
        return _template


async def create() -> str:
    """A fresh, migrated database; returns its URL."""
    name = f"{PREFIX}{secrets.token_hex(6)}"
    tmpl = template()
    for attempt in range(50):
        try:
            await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{tmpl}"')
            break
        except asyncpg.ObjectInUseError:  # another test process copies the same template: wait a little
            if attempt == 49:
                raise
            await asyncio.sleep(0.05)
    return url_of(name)


def create_blocking() -> str:
    """`create` for code outside an event loop (or inside one it must not wait on): the URL of a fresh,
    migrated database; drop it with `drop_blocking`."""
    url: str = _in_thread(create)
    return url


def drop_blocking(url: str) -> None:
    drop(urlsplit(url).path.lstrip("/"))


async def drop_url(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop(name: str) -> None:
    _in_thread(lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def migrate_blocking(url: str) -> None:
    """Apply the pending migrations to the database at `url` (`models.db.migrate`, as `main.py migrate`)."""
    _in_thread(lambda: migrate(url))


def create_empty() -> str:
    """A new database with no tables (for a real process to migrate), dropped when the tests end; its URL."""
    name = f"{PREFIX}{secrets.token_hex(6)}"
    _in_thread(lambda: _admin(f'CREATE DATABASE "{name}"'))
    atexit.register(drop, name)
    return url_of(name)


def sql(url: str, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """One statement (`?` placeholders) on the database at `url`, in a transaction of its own."""

    async def work() -> list[dict[str, Any]]:
        conn = _Conn(await asyncpg.connect(dsn(url), statement_cache_size=0))
        try:
            async with conn.conn.transaction():
                stmt, args = await conn.bind(query, params)
                return [dict(r) for r in await stmt.fetch(*args)]
        finally:
            await conn.conn.close()

    rows: list[dict[str, Any]] = _in_thread(work)
    return rows
