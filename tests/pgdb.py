"""Test databases on PostgreSQL, for a run of the suite with `STEPDECK_TEST_DB=postgres`.

One database is migrated once per test process (the template); each test gets a database copied from it
(`CREATE DATABASE … TEMPLATE`). Creating and dropping a database costs about a second on a busy server,
so a test's database is not dropped afterwards but emptied (its rows deleted and its sequences restarted,
a few milliseconds, after its connections are ended) and handed to the next test of the process, as
fresh as a copy: one whose schema no longer matches the template's is dropped instead. Every database
is dropped when the process exits. The server is
`STEPDECK_TEST_PG` (default `postgresql://postgres@127.0.0.1:5432/test`: any database of it to
connect to while creating the others).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from engine.db.postgres import _Conn, dsn
from models.db import migrate
from tests.dbtemplate import on_own_loop

ENABLED = os.environ.get("STEPDECK_TEST_DB", "sqlite").lower() in ("postgres", "postgresql")
SERVER = os.environ.get("STEPDECK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# Every database made here is named with this prefix (a CI run sets its own, to find what it leaves).
PREFIX = os.environ.get("STEPDECK_TEST_PG_PREFIX", "stepdeck_test_")

T = TypeVar("T")

_lock = threading.Lock()
_template: str | None = None
_schema: str | None = None  # the template's schema, as `_SCHEMA_SQL` describes it
_free: list[str] = []  # emptied databases, ready for the next test
_kept: set[str] = set()  # every database of this process that is not dropped after its test

# What a test may not change for its database to be handed on: tables, columns, indexes, constraints,
# sequences, functions and the migrations recorded.
_SCHEMA_SQL = """
SELECT md5(concat_ws('|',
  (SELECT string_agg(concat_ws(':', table_name, column_name, data_type, column_default, is_nullable), ','
     ORDER BY table_name, column_name) FROM information_schema.columns WHERE table_schema = 'public'),
  (SELECT string_agg(indexdef, ',' ORDER BY indexdef) FROM pg_indexes WHERE schemaname = 'public'),
  (SELECT string_agg(pg_get_constraintdef(c.oid), ',' ORDER BY c.conrelid::regclass::text, c.conname)
     FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'public'),
  (SELECT string_agg(sequencename || data_type, ',' ORDER BY sequencename) FROM pg_sequences
     WHERE schemaname = 'public'),
  (SELECT string_agg(p.proname, ',' ORDER BY p.proname) FROM pg_proc p JOIN pg_namespace n
     ON n.oid = p.pronamespace WHERE n.nspname = 'public'),
  (SELECT string_agg(app || '.' || name, ',' ORDER BY id) FROM tortoise_migrations)))
"""


def url_of(name: str) -> str:
    parts = urlsplit(SERVER)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


def _in_thread(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `work` on a loop of its own (callers may be inside an event loop already)."""
    return on_own_loop(work, "stepdeck-pg-admin")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(SERVER)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _build() -> str:
    global _schema
    name = f"{PREFIX}tmpl_{os.getpid()}_{secrets.token_hex(3)}"
    _in_thread(lambda: _admin(f'CREATE DATABASE "{name}"'))
    atexit.register(drop, name)
    _in_thread(lambda: migrate(url_of(name)))
    _schema = _in_thread(lambda: _schema_of(name))
    return name


async def _schema_of(name: str) -> str:
    conn = await asyncpg.connect(url_of(name))
    try:
        value: str = await conn.fetchval(_SCHEMA_SQL)
        return value
    finally:
        await conn.close()


def drop_all() -> None:
    """Drop every database of this process (at the end of its session: a test process of pytest-xdist
    may end without running `atexit` handlers)."""
    global _template
    with _lock:
        names = sorted(_kept)
        _free.clear()
        _kept.clear()
        tmpl, _template = _template, None
    for name in [*names, *([tmpl] if tmpl else [])]:
        drop(name)


atexit.register(drop_all)


def template() -> str:
    global _template
    with _lock:
        if _template is None:
            _template = _build()
        return _template


async def create() -> str:
    """A fresh, migrated database; returns its URL. Give it back with `drop_url` (or `drop_blocking`)."""
    tmpl = template()
    with _lock:
        if _free:
            return url_of(_free.pop())
    name = f"{PREFIX}{secrets.token_hex(6)}"
    await _copy(tmpl, name)
    with _lock:
        _kept.add(name)
    return url_of(name)


async def _copy(tmpl: str, name: str) -> None:
    for attempt in range(50):
        try:
            await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{tmpl}"')
            return
        except asyncpg.ObjectInUseError:  # the template is being copied by another connection: wait a little
            if attempt == 49:
                raise
            await asyncio.sleep(0.05)


def create_blocking() -> str:
    """`create` for code outside an event loop (or inside one it must not wait on): the URL of a fresh,
    migrated database; drop it with `drop_blocking`."""
    url: str = _in_thread(create)
    return url


def drop_blocking(url: str) -> None:
    """`drop_url` for code outside an event loop."""
    _in_thread(lambda: drop_url(url))


async def drop_url(url: str) -> None:
    """Done with a database of `create`: emptied for the next test, or dropped when it cannot be."""
    name = urlsplit(url).path.lstrip("/")
    if name in _kept and await _emptied(name):
        with _lock:
            _free.append(name)
        return
    with _lock:
        _kept.discard(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _emptied(name: str) -> bool:
    """End every other connection to the database (as `DROP DATABASE … WITH (FORCE)` would), then delete
    its rows and restart its sequences; False when its schema is no longer the template's."""
    conn = await asyncpg.connect(url_of(name))
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
        if await conn.fetchval(_SCHEMA_SQL) != _schema:
            return False
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'tortoise_migrations'"
        )
        sequences = await conn.fetch(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
            " AND sequencename <> 'tortoise_migrations_id_seq'"
        )
        # Every reference between the tables cascades or sets null on delete: any order empties them.
        work = [f'DELETE FROM "{name}"' for name in (t["tablename"] for t in tables)]
        work += [f"SELECT setval('\"{name}\"', 1, false)" for name in (q["sequencename"] for q in sequences)]
        await conn.execute("BEGIN; " + "; ".join(work) + "; COMMIT")
        return True
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


def drop(name: str) -> None:
    _in_thread(lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def migrate_blocking(url: str) -> None:
    """Apply the pending migrations to the database at `url` (`models.db.migrate`, as `main.py migrate`).
    A database that has no table yet becomes a copy of the template instead, which that same migration
    built in this process (a few tenths of a second against seconds)."""
    _in_thread(lambda: _migrate(url))


async def _migrate(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(url)
    try:
        empty = not await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    if not empty:
        await migrate(url)
        return
    tmpl = template()
    await _admin(f'DROP DATABASE "{name}" WITH (FORCE)')
    await _copy(tmpl, name)


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


class ServedProcesses:
    """Keeps the suite's served processes under the PostgreSQL server's `max_connections` (100 by default),
    on any number of xdist workers and across suites sharing the server.

    A served process holds a dozen connections or so when busy (its pools, its listening connection), so
    at most `BUDGET` of them run on the server at once: a process is counted from just before its start
    until it has exited, in a file shared by every test process (under `flock`, each entry the pid of
    a served process, dropped when that process has ended). A start waits for room; one that has waited
    `WAIT_S` goes ahead anyway, so tests that each hold a process while waiting for another cannot wait
    on each other for ever."""

    BUDGET = 5
    WAIT_S = 60.0
    RESERVED_S = 30.0  # how long a place taken for a process about to start counts without its pid

    def __init__(self) -> None:
        parts = urlsplit(SERVER)
        self._path = Path(tempfile.gettempdir()) / f"stepdeck-pg-{parts.hostname or 'localhost'}-{parts.port or 5432}"
        self._place: str | None = None  # the place taken by `before_start`, until `add` names its process

    def before_start(self) -> None:
        """Call before a served process starts (waits for room); then `add` it. Nothing on SQLite."""
        if not ENABLED:
            return
        deadline = time.monotonic() + self.WAIT_S
        while True:
            with self._entries() as entries:
                if len(entries) < self.BUDGET or time.monotonic() > deadline:
                    self._place = f"reserved:{os.getpid()}:{time.time() + self.RESERVED_S}"
                    entries.append(self._place)
                    return
            time.sleep(0.2)

    def add(self, pid: int) -> None:
        if not ENABLED:
            return
        with self._entries() as entries:
            if self._place in entries:
                entries.remove(self._place)
            entries.append(str(pid))
        self._place = None

    @contextlib.contextmanager
    def _entries(self) -> Iterator[list[str]]:
        with open(self._path, "a+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            entries = [e for e in f.read().split() if _alive(e)]
            yield entries
            f.seek(0)
            f.truncate()
            f.write("\n".join(entries))


def _alive(entry: str) -> bool:
    """A served process's pid that is still running, or a place reserved for one that has not expired."""
    if entry.startswith("reserved:"):
        _, pid, until = entry.split(":")
        return time.time() < float(until) and _running(int(pid))
    return entry.isdigit() and _running(int(entry))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child that has exited but is not reaped yet still answers: it holds no connection any more.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True


served_processes = ServedProcesses()
