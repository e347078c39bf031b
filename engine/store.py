"""Atomic batches of SQL statements: the write path of `engine/transitions.py`.

A batch is a short list of statements run in one transaction. A statement marked `guard` must
change at least one row, or the whole batch is rolled back: that is how a compare-and-set
(`UPDATE … WHERE id = ? AND status = ?`) and its event row commit together or not at all.

On SQLite the whole batch runs in one hop to aiosqlite's thread (`BEGIN IMMEDIATE` … `COMMIT`),
under the lock Tortoise holds around its single connection, so no other query of this process
interleaves and the write lock is taken up front instead of failing half-way. Each hop costs
about 0.1 ms, which is what a transaction of several statements would otherwise pay per
statement. Other databases go through Tortoise's transaction with `?` turned into `$n`.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.backends.sqlite.client import SqliteClient
from tortoise.transactions import in_transaction


@dataclass(frozen=True, slots=True)
class Ref:
    """A parameter taken from an earlier statement of the same batch: its first returned value."""

    index: int


@dataclass(frozen=True, slots=True)
class Stmt:
    """One statement of a batch; `many` runs it once per parameter row."""

    sql: str
    params: Sequence[Any] = ()
    guard: bool = False
    many: Sequence[Sequence[Any]] | None = None


@dataclass(slots=True)
class BatchResult:
    """What a batch did: `ok` is False when a guard matched no row (nothing was committed)."""

    ok: bool
    failed_guard: int | None = None
    rowcounts: list[int] = field(default_factory=list)
    rows: list[list[tuple[Any, ...]]] = field(default_factory=list)


class GuardFailed(Exception):
    def __init__(self, index: int) -> None:
        super().__init__(f"guard {index} matched no row")
        self.index = index


def _bind(params: Sequence[Any], rows: list[list[tuple[Any, ...]]]) -> list[Any]:
    return [encode(rows[v.index][0][0] if isinstance(v, Ref) else v) for v in params]


def encode(value: Any) -> Any:
    """A Python value as a SQL parameter, in the formats Tortoise reads back."""
    if isinstance(value, datetime):
        return value.isoformat(" ")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _guard_holds(stmt: Stmt, count: int, rows: list[tuple[Any, ...]]) -> bool:
    # A guarded `many` must change every row it names; a single statement at least one.
    if stmt.many is not None:
        return count >= len(stmt.many)
    return count >= 1 or bool(rows)


def _client() -> BaseDBAsyncClient:
    return connections.get("default")


def _run_sqlite_batch(conn: sqlite3.Connection, stmts: Sequence[Stmt]) -> BatchResult:
    result = BatchResult(ok=True)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for index, stmt in enumerate(stmts):
            if stmt.many is not None:
                cur = conn.executemany(stmt.sql, [_bind(row, result.rows) for row in stmt.many])
                rows: list[tuple[Any, ...]] = []
            else:
                cur = conn.execute(stmt.sql, _bind(stmt.params, result.rows))
                rows = [tuple(r) for r in cur.fetchall()]
            count = cur.rowcount if cur.rowcount >= 0 else len(rows)
            if stmt.guard and not _guard_holds(stmt, count, rows):
                raise GuardFailed(index)
            result.rowcounts.append(count)
            result.rows.append(rows)
    except GuardFailed as exc:
        conn.execute("ROLLBACK")
        return BatchResult(ok=False, failed_guard=exc.index)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


async def _run_generic_batch(client: BaseDBAsyncClient, stmts: Sequence[Stmt]) -> BatchResult:
    result = BatchResult(ok=True)
    try:
        async with in_transaction(client.connection_name) as tx:
            for index, stmt in enumerate(stmts):
                sql = stmt.sql if isinstance(client, SqliteClient) else _numbered(stmt.sql)
                if stmt.many is not None:
                    await tx.execute_many(sql, [_bind(row, result.rows) for row in stmt.many])
                    count, rows = len(stmt.many), []
                else:
                    count, raw = await tx.execute_query(sql, _bind(stmt.params, result.rows))
                    rows = [tuple(dict(r).values()) for r in raw]
                if stmt.guard and not _guard_holds(stmt, count, rows):
                    raise GuardFailed(index)
                result.rowcounts.append(count)
                result.rows.append(rows)
    except GuardFailed as exc:
        return BatchResult(ok=False, failed_guard=exc.index)
    return result


async def run_batch(stmts: Sequence[Stmt], *, generic: bool = False) -> BatchResult:
    """Run the statements in one transaction; roll back and report when a guard matches nothing."""
    client = _client()
    if isinstance(client, SqliteClient) and not generic:
        async with client.acquire_connection() as aconn:
            try:
                return await aconn._execute(_run_sqlite_batch, aconn._conn, stmts)  # type: ignore[no-any-return]
            except sqlite3.IntegrityError as exc:
                raise StoreIntegrityError(str(exc)) from exc
    return await _run_generic_batch(client, stmts)


class StoreIntegrityError(Exception):
    """A unique or foreign-key constraint refused the batch (nothing was committed)."""


async def fetch(sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows of a read query as dicts (placeholders `?`, turned into `$n` where needed)."""
    client = _client()
    if not isinstance(client, SqliteClient):
        sql = _numbered(sql)
    return await client.execute_query_dict(sql, [encode(v) for v in params])
