"""Atomic batches of SQL statements: the write path of `engine/transitions.py`.

A batch is a short list of statements run in one transaction. A statement marked `guard` must
change at least one row, or the whole batch is rolled back: that is how a compare-and-set
(`UPDATE … WHERE id = ? AND status = ?`) and its event row commit together or not at all.

On SQLite the whole batch runs in one hop to aiosqlite's thread (`BEGIN IMMEDIATE` … `COMMIT`),
under the lock Tortoise holds around its single connection, so no other query of this process
interleaves and the write lock is taken up front instead of failing half-way. Each hop costs
about 0.1 ms, which is what a transaction of several statements would otherwise pay per
statement. Batches that arrive while a commit is in flight are committed together, each under
its own savepoint (group commit). Other databases go through Tortoise's transaction with `?`
turned into `$n`.
"""

from __future__ import annotations

import asyncio
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
from tortoise.exceptions import IntegrityError
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
    client: BaseDBAsyncClient = connections.get("default")
    return client


def _run_sqlite_batch(conn: sqlite3.Connection, stmts: Sequence[Stmt]) -> BatchResult:
    """One batch inside the open transaction, under its own savepoint (rolled back alone on failure)."""
    result = BatchResult(ok=True)
    conn.execute("SAVEPOINT batch")
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
        conn.execute("ROLLBACK TO batch")
        conn.execute("RELEASE batch")
        return BatchResult(ok=False, failed_guard=exc.index)
    except BaseException:
        # Some errors (disk full, I/O) end the whole transaction: then there is no savepoint to
        # roll back to, and the original error must surface, not "no such savepoint".
        if conn.in_transaction:
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
        raise
    conn.execute("RELEASE batch")
    return result


def _run_sqlite_group(conn: sqlite3.Connection, batches: Sequence[Sequence[Stmt]]) -> list[BatchResult | Exception]:
    """Several independent batches in one transaction: one commit (one WAL append) for all of them."""
    results: list[BatchResult | Exception] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmts in batches:
            try:
                results.append(_run_sqlite_batch(conn, stmts))
            except sqlite3.IntegrityError as exc:
                results.append(StoreIntegrityError(str(exc)))
            except Exception as exc:
                if not conn.in_transaction:
                    raise  # the transaction is gone: every batch of the group failed
                results.append(exc)  # this batch alone was rolled back; the others stand
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


class _GroupCommitter:
    """Batches submitted while a commit is in flight wait and then commit together.

    A lone batch runs inline in its caller (no extra task, the common case of one busy run). Batches
    that queue up meanwhile are committed by a flusher task, so a caller that is cancelled never
    strands the batches of others.
    """

    MAX_GROUP = 64

    def __init__(self, client: SqliteClient) -> None:
        self.client = client
        self.busy = False
        self.pending: list[tuple[Sequence[Stmt], asyncio.Future[BatchResult]]] = []
        self.flusher: asyncio.Task[None] | None = None

    async def submit(self, batches: Sequence[Sequence[Stmt]]) -> list[BatchResult | Exception]:
        if self.busy:
            loop = asyncio.get_running_loop()
            futures: list[asyncio.Future[BatchResult]] = [loop.create_future() for _ in batches]
            self.pending.extend(zip(batches, futures, strict=True))
            done = await asyncio.gather(*futures, return_exceptions=True)
            return [r if isinstance(r, (BatchResult, Exception)) else RuntimeError(str(r)) for r in done]
        self.busy = True
        try:
            return await self._execute(list(batches))
        finally:
            if self.pending:
                self.flusher = asyncio.create_task(self._flush(), name="stepdeck-group-commit")
            else:
                self.busy = False

    async def _execute(self, batches: list[Sequence[Stmt]]) -> list[BatchResult | Exception]:
        async with self.client.acquire_connection() as aconn:
            return await aconn._execute(_run_sqlite_group, aconn._conn, batches)  # type: ignore[no-any-return]

    async def _flush(self) -> None:
        try:
            while self.pending:
                group, self.pending = self.pending[: self.MAX_GROUP], self.pending[self.MAX_GROUP :]
                try:
                    results = await self._execute([g[0] for g in group])
                except Exception as exc:
                    results = [exc] * len(group)
                for (_, future), result in zip(group, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            for _, future in self.pending:
                future.cancel()
            self.pending = []
            self.busy = False


_committers: dict[int, _GroupCommitter] = {}


def _committer(client: SqliteClient) -> _GroupCommitter:
    committer = _committers.get(id(client))
    if committer is None or committer.client is not client:
        committer = _committers[id(client)] = _GroupCommitter(client)
    return committer


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
    result = (await run_batches([stmts], generic=generic))[0]
    if isinstance(result, Exception):
        raise result
    return result


async def run_batches(batches: Sequence[Sequence[Stmt]], *, generic: bool = False) -> list[BatchResult | Exception]:
    """Independent batches, in order, each all-or-nothing; on SQLite they share one commit.

    A batch that fails (guard, constraint, a value SQLite refuses) fails alone; an error that ends
    the transaction itself (disk full, I/O) fails them all.
    """
    client = _client()
    if isinstance(client, SqliteClient) and not generic:
        return await _committer(client).submit(batches)
    results: list[BatchResult | Exception] = []
    for stmts in batches:
        try:
            results.append(await _run_generic_batch(client, stmts))
        except IntegrityError as exc:
            results.append(StoreIntegrityError(str(exc)))
    return results


class StoreIntegrityError(Exception):
    """A unique or foreign-key constraint refused the batch (nothing was committed)."""


async def fetch(sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows of a read query as dicts (placeholders `?`, turned into `$n` where needed)."""
    client = _client()
    if not isinstance(client, SqliteClient):
        sql = _numbered(sql)
    return await client.execute_query_dict(sql, [encode(v) for v in params])
