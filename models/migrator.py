"""Applying migrations: each one and its record in one transaction, one process at a time.

Tortoise's own executor commits a migration's tables in one transaction and its record in another: a
process killed (or a disk filling up) between the two left tables nobody recorded, and every later
start failed with `table "X" already exists` (SQLite) or `relation "X" already exists` (PostgreSQL).
Here the record is written first, in the same transaction as the tables, on both. On SQLite that first
write takes the database's write lock, so a second process migrating the same file waits for the first
and then finds the migration recorded; on PostgreSQL the caller holds an advisory lock besides
(`models.schema.migration_lock`), and the record's unique key would stop a second writer all the same.
A database left half-applied by an older version is detected (the migration's objects already exist)
and repaired by applying what is missing and recording the rest, with a warning that says so.

Planning and state projection are Tortoise's own (`MigrationExecutor`, internals of the pinned 1.1.9:
re-check them when the pin moves); only applying and recording are done here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import OperationalError
from tortoise.migrations.executor import MigrationExecutor
from tortoise.migrations.graph import MigrationKey
from tortoise.migrations.migration import Migration
from tortoise.migrations.schema_editor import AsyncpgSchemaEditor, SqliteSchemaEditor
from tortoise.migrations.schema_editor.base import BaseSchemaEditor
from tortoise.migrations.schema_generator.state import State
from tortoise.transactions import in_transaction

from models.errors import DatabaseUnavailable
from models.testhooks import pause_point

log = logging.getLogger(f"stepdeck.{__name__}")  # the namespace of engine/logs.py, which models/ may not import

RECORD_TABLE = "tortoise_migrations"
# What SQLite and PostgreSQL say when an object a migration creates is already there.
_ALREADY_THERE = ("already exists", "duplicate column name")
DIALECTS = ("sqlite", "postgres")


class MigrationError(DatabaseUnavailable):
    """A migration could not be applied; the message names it and says what to do."""


@dataclass
class _Outcome:
    applied: bool  # False: another process recorded it first
    already_present: list[str] = field(default_factory=list)


def statements(sql: str) -> list[str]:
    """The statements of a script: split on `;` outside quoted text and names, blanks left out."""
    found: list[str] = []
    start, quote = 0, ""
    for i, char in enumerate(sql):
        if quote:
            quote = "" if char == quote else quote  # a doubled quote closes and reopens: same result
        elif char in "'\"":
            quote = char
        elif char == ";":
            found.append(sql[start:i])
            start = i + 1
    found.append(sql[start:])
    return [statement.strip() for statement in found if statement.strip()]


class _Repairing(BaseSchemaEditor):
    """Runs each statement under a savepoint and skips the ones whose object already exists."""

    already_present: list[str]

    async def _run_sql(self, sql: str) -> None:
        for statement in statements(sql):
            await self.client.execute_query("SAVEPOINT stepdeck_repair")
            try:
                await self.client.execute_query(statement)
            except OperationalError as exc:
                if not _is_already_there(exc):
                    raise
                await self.client.execute_query("ROLLBACK TO SAVEPOINT stepdeck_repair")
                self.already_present.append(str(exc))
            await self.client.execute_query("RELEASE SAVEPOINT stepdeck_repair")


class _RepairingSqlite(_Repairing, SqliteSchemaEditor):
    pass


class _RepairingPostgres(_Repairing, AsyncpgSchemaEditor):
    pass


def _editor(client: BaseDBAsyncClient, *, repair: bool) -> BaseSchemaEditor:
    """The schema editor of the connection's dialect, inside the caller's transaction."""
    editor: BaseSchemaEditor
    if client.capabilities.dialect == "sqlite":
        editor = _RepairingSqlite(client, atomic=True) if repair else SqliteSchemaEditor(client, atomic=True)
    else:
        editor = _RepairingPostgres(client, atomic=True) if repair else AsyncpgSchemaEditor(client, atomic=True)
    if isinstance(editor, _Repairing):
        editor.already_present = []
    return editor


async def _claim(client: BaseDBAsyncClient, key: MigrationKey) -> bool:
    """Record the migration as the transaction's first write; False if it was already recorded."""
    if client.capabilities.dialect == "sqlite":
        changed, _ = await client.execute_query(
            f'INSERT OR IGNORE INTO "{RECORD_TABLE}" ("app", "name", "applied_at") VALUES (?, ?, ?)',
            [key.app_label, key.name, datetime.now(UTC)],
        )
        return changed > 0
    # Tortoise's asyncpg client reads an INSERT's row count from the OID field (always 0): count the rows
    # RETURNING gives instead. A second writer of the same record waits here for the first one's commit.
    rows = await client.execute_query_dict(
        f'INSERT INTO "{RECORD_TABLE}" ("app", "name", "applied_at") VALUES ($1, $2, $3) '
        'ON CONFLICT DO NOTHING RETURNING "id"',
        [key.app_label, key.name, datetime.now(UTC)],
    )
    return len(rows) > 0


async def _apply_one(connection_name: str, migration: Migration, state: State, *, repair: bool) -> _Outcome:
    key = MigrationKey(app_label=migration.app_label, name=migration.name)
    async with in_transaction(connection_name) as client:
        if not await _claim(client, key):
            return _Outcome(applied=False)
        editor = _editor(client, repair=repair)
        await migration.apply(state, schema_editor=editor)
        await pause_point(f"migrate:applied:{key.app_label}.{key.name}")
        present = editor.already_present if isinstance(editor, _Repairing) else []
        return _Outcome(applied=True, already_present=present)


def _is_already_there(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) and any(marker in str(exc) for marker in _ALREADY_THERE)


async def apply_pending(connection: BaseDBAsyncClient, apps_config: dict[str, dict[str, Any]]) -> list[str]:
    """Apply every pending migration on a SQLite or PostgreSQL connection (on PostgreSQL, under the caller's
    `migration_lock`); returns the names of those applied here."""
    try:
        return await _apply_pending(connection, apps_config)
    except MigrationError:
        raise
    except Exception as exc:  # the file is unreadable, not a database, on a full disk...
        raise MigrationError(f"could not migrate the database: {exc}") from exc


async def _apply_pending(connection: BaseDBAsyncClient, apps_config: dict[str, dict[str, Any]]) -> list[str]:
    if connection.capabilities.dialect not in DIALECTS:
        dialect = connection.capabilities.dialect
        raise MigrationError(f"migrations are applied on SQLite and PostgreSQL only, not {dialect}")
    executor = MigrationExecutor(connection, apps_config)
    await executor.loader.build_graph()
    await executor.recorder.ensure_schema(executor._schema_editor(atomic=False))
    applied_keys = set(await executor.recorder.applied_migrations())
    plan = executor._migration_plan(None, applied_keys, executor.loader.graph)
    if not plan:
        return []  # up to date (every start of a server): the models' state is not built
    state = await executor._project_state(applied_keys)
    done: list[str] = []
    for step in plan:
        migration = step.migration
        name = f"{migration.app_label}.{migration.name}"
        try:
            outcome = await _apply_one(connection.connection_name, migration, state.clone(), repair=False)
        except Exception as exc:
            if not _is_already_there(exc):
                raise MigrationError(f"migration {name} failed and was rolled back: {exc}") from exc
            log.warning(
                "the database was left half-migrated (%s: %s, yet the migration is not recorded; an earlier "
                "migrate was cut off): repairing it",
                name,
                exc,
            )
            try:
                outcome = await _apply_one(connection.connection_name, migration, state.clone(), repair=True)
            except Exception as again:
                raise MigrationError(
                    f"migration {name} is half-applied and could not be repaired ({again}); restore a backup "
                    "of the database, or remove the objects it creates and run `main.py migrate` again"
                ) from again
            if outcome.applied:
                log.warning(
                    "repaired migration %s: created what was missing and recorded it (already present: %s)",
                    name,
                    "; ".join(outcome.already_present) or "nothing",
                )
        await migration.apply(state, dry_run=True)  # the next migration starts from this one's state
        if outcome.applied:
            done.append(name)
        await pause_point(f"migrate:committed:{name}")
    return done
