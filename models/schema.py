"""The schema version of a database: which migrations it still lacks, and (on PostgreSQL, where several
processes share one database) one migrating process at a time."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from tortoise import Tortoise
from tortoise.connection import get_connection
from tortoise.migrations.executor import MigrationExecutor

from models.errors import DatabaseUnavailable

# The key of the session-level advisory lock `migrate` holds on PostgreSQL ("stepdeck" in ASCII, as a
# positive bigint): a second `migrate` waits for the first, then finds nothing left to apply.
MIGRATION_LOCK_KEY = int.from_bytes(b"stepdeck", "big") & 0x7FFF_FFFF_FFFF_FFFF


def is_postgres(url: str) -> bool:
    return url.split(":", 1)[0] in ("postgres", "postgresql")


# Query parameters of a PostgreSQL URL that size or tune Tortoise's pool: not libpq's (asyncpg would send
# an unknown one to the server as a setting, and the server refuses it).
TORTOISE_PARAMS = frozenset(
    {
        "minsize",
        "maxsize",
        "max_queries",
        "max_inactive_connection_lifetime",
        "timeout",
        "statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "schema",
    }
)


def dsn(url: str) -> str:
    """A PostgreSQL URL as asyncpg takes it: libpq's parameters kept (`sslmode`, `sslrootcert`,
    `target_session_attrs`…, which asyncpg reads as libpq does), Tortoise's pool parameters left out."""
    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in TORTOISE_PARAMS])
    return urlunsplit(("postgresql", parts.netloc, parts.path, query, ""))


def where(url: str) -> str:
    """The server and database of a URL, without its credentials (for messages)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


async def connect(db_url: str) -> Any:
    """A connection of its own to the PostgreSQL database at `db_url`; DatabaseUnavailable saying why not."""
    try:
        return await asyncpg.connect(dsn(db_url), timeout=30)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"cannot reach the PostgreSQL database at {where(db_url)}: {exc}") from exc


@contextlib.asynccontextmanager
async def migration_lock(db_url: str) -> AsyncIterator[None]:
    """Held around migrations: on PostgreSQL an advisory lock on a connection of its own (released if the
    process dies); on SQLite nothing (a single process owns the file)."""
    if not is_postgres(db_url):
        yield
        return
    conn = await connect(db_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()


async def schema_mismatch(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """How the database of a Tortoise `config` differs from the code's migrations (`app.name` each): those
    it lacks, and those it has that this code does not know (a newer version migrated it). Changes nothing."""
    connection = config["connections"]["default"]
    if isinstance(connection, dict):  # PostgreSQL (`models.db.tortoise_config`)
        await (await connect(connection["credentials"]["dsn"])).close()  # unreachable: DatabaseUnavailable
    await Tortoise.init(config=config, _enable_global_fallback=True)
    try:
        executor = MigrationExecutor(get_connection("default"), config["apps"])
        plan = await executor.plan()
        applied = await executor.recorder.applied_migrations()
        known = set(executor.loader.disk_migrations)
    finally:
        await Tortoise.close_connections()
    missing = [f"{step.migration.app_label}.{step.migration.name}" for step in plan if not step.backward]
    unknown = [f"{key.app_label}.{key.name}" for key in applied if key not in known]
    return missing, unknown
