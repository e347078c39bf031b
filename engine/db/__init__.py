"""The database of this process: the one documented place that opens, holds and closes it.

Two ways in, for two jobs: Tortoise ORM (models/, migrations, accounts and their audit) and the
engine's own connections (`current()`: every run, step, attempt and event statement, reads for pages
and the API). `open_database` opens both; `close_database` closes both.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

from engine.db.base import Database
from engine.db.postgres import PostgresDatabase, is_postgres
from engine.db.sqlite import SqliteDatabase
from models.db import check_url, close_db, migrate, open_db, prepare_location, sqlite_path, with_sqlite_pragmas
from models.errors import StepdeckError

_current: Database | None = None


class DatabaseNotOpen(StepdeckError, RuntimeError):
    """Something read or wrote before the database was opened (or after it was closed)."""


def current() -> Database:
    """The open database of this process."""
    if _current is None:
        raise DatabaseNotOpen("the database is not open (engine.db.open_database was not called)")
    return _current


def now() -> datetime:
    """The clock of the open database (`Database.now`): the time the engine writes. Before a database is
    open (or in pure functions' tests), the process's own clock."""
    return _current.now() if _current is not None else datetime.now(UTC)


def _engine_database(url: str) -> Database:
    check_url(url)
    if is_postgres(url):
        return PostgresDatabase(url)
    path = sqlite_path(url)
    assert path is not None  # check_url refuses the others
    pragmas = dict(parse_qsl(urlsplit(with_sqlite_pragmas(url)).query))
    return SqliteDatabase(str(path), pragmas)


async def open_database(url: str) -> Database:
    """Connect this process to the (migrated) database at `url`; call on the event loop that uses it."""
    global _current
    if _current is not None:
        await close_database()
    check_url(url)
    prepare_location(url)
    await open_db(url)
    database: Database | None = None
    try:
        database = _engine_database(url)
        if isinstance(database, PostgresDatabase):
            await database.sync_clock()  # the clock this process writes is the server's
    except BaseException:
        if database is not None:
            await database.close()
        await close_db()
        raise
    _current = database
    return database


async def close_database() -> None:
    global _current
    database, _current = _current, None
    try:
        if database is not None:
            await database.close()
    finally:
        await close_db()


@contextlib.asynccontextmanager
async def connected(url: str, *, apply_migrations: bool = True, must_exist: bool = False) -> AsyncIterator[Database]:
    """Migrate (optionally), connect, and always close: worker threads would keep a script alive.
    `must_exist`: refuse (DatabaseUnavailable) rather than create a database that is not there."""
    check_url(url, must_exist=must_exist)
    if apply_migrations:
        await migrate(url)
    database = await open_database(url)
    try:
        yield database
    finally:
        await close_database()
