"""The engine's PostgreSQL backend: asyncpg connections of its own (Tortoise's cannot be used here: its
`execute_query` drops `RETURNING` rows and reads an INSERT's row count from the OID field).

SQL is written once with `?` placeholders; they become `$1…$n` here, and each value is sent in the
type PostgreSQL inferred for its placeholder (a datetime for a `timestamptz`, JSON text for a
`jsonb`…), so the engine's statements need no casts and stay the same on SQLite.

Writes. One transaction per call of `run_batches`, each batch under a savepoint when there are
several (a batch fails alone; the later batches see the earlier ones, as on SQLite). Under READ
COMMITTED a guard with a sub-select on *other* rows (a step's needs, a run's steps) can read rows
that a concurrent transaction is changing; a transaction therefore first locks the rows of the runs its
batches touch (`Batch.lock_runs`, `FOR NO KEY UPDATE`, in id order, once, before any savepoint): the
transitions of one run commit one after the other, and each sees the last one's result. Guards are
checked from the row counts of the command tags (`UPDATE 3`, `INSERT 0 1`). A step's cost here is mostly
round trips: the control statements (BEGIN, the lock, savepoints, COMMIT) travel together, and the rows
of an unguarded multi-row statement (a run's steps at its creation) are pipelined.

Reads. A small pool for pages and the API and one for the engine, separate from the writers'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from engine import logs
from engine.db import pg_feed
from engine.db.base import (
    POSTGRESQL,
    Batch,
    BatchResult,
    GuardFailed,
    Outcome,
    Ref,
    Stmt,
    StoreIntegrityError,
    guard_holds,
)
from engine.hub import ChangeJson, Hub
from models.schema import dsn, is_postgres

__all__ = ["PostgresDatabase", "dsn", "is_postgres"]

log = logs.logger(__name__)

WRITERS = 4
READERS = 3
ENGINE_READERS = 2
CLOCK_RESYNC_S = 60.0  # how often the offset of the server's clock from this host's is measured again
DEADLOCK_RETRIES = 3
MAX_PREPARED = 500  # statements kept prepared per connection


_translated: dict[tuple[str, tuple[int, ...], tuple[int, ...]], str] = {}


# What a batch's clock parameter (`Batch.clock`) becomes: the database's clock when each statement starts.
# Not `now()`, the transaction's start: a transaction that began, then waited for a run's lock, wrote a
# time earlier than the transaction it waited for (a run finished before it started). A statement starts
# after the lock is held, so the times of one run follow its commits.
CLOCK_SQL = "statement_timestamp()"


def placeholders(sql: str, wide: tuple[int, ...] = (), clock: tuple[int, ...] = ()) -> str:
    """`?` → `$1…$n`, outside quoted literals and identifiers; those numbered in `wide` as `$n::bigint`; the
    `?` at the positions in `clock` (counted among all the `?`) as the database's clock, without a parameter."""
    cached = _translated.get((sql, wide, clock))
    if cached is not None:
        return cached
    out: list[str] = []
    n = 0
    m = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
            out.append(ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            n += 1
            if n in clock:
                out.append(CLOCK_SQL)
                continue
            m += 1
            out.append(f"${m}::bigint" if m in wide else f"${m}")
        else:
            out.append(ch)
    result = "".join(out)
    _translated[(sql, wide, clock)] = result
    return result


def _to_datetime(value: Any) -> Any:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # the engine's naive datetimes are UTC (as Tortoise's `use_tz`)
    return value


def _to_json(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _to_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.isoformat(" ")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _to_int(value: Any) -> Any:
    return int(value) if isinstance(value, (bool, str)) else value


def _to_bool(value: Any) -> Any:
    return bool(value) if isinstance(value, int) else value


def _to_float(value: Any) -> Any:
    return float(value) if isinstance(value, (int, str, Decimal)) and not isinstance(value, bool) else value


_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "timestamptz": _to_datetime,
    "timestamp": _to_datetime,
    "json": _to_json,
    "jsonb": _to_json,
    "text": _to_text,
    "varchar": _to_text,
    "bpchar": _to_text,
    "int2": _to_int,
    "int4": _to_int,
    "int8": _to_int,
    "bool": _to_bool,
    "float4": _to_float,
    "float8": _to_float,
}


def _identity(value: Any) -> Any:
    return value


def _row(record: asyncpg.Record) -> dict[str, Any]:
    # Sums of integers come back as numeric: give the engine the int or float SQLite gives.
    return {k: (_number(v) if isinstance(v, Decimal) else v) for k, v in record.items()}


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _count(status: str | None, rows: Sequence[Any]) -> int:
    tail = (status or "").rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else len(rows)


@dataclass(eq=False)
class _Conn:
    """A connection and its prepared statements (with the types of their parameters)."""

    conn: asyncpg.Connection
    prepared: dict[tuple[str, tuple[int, ...], tuple[int, ...]], _Prepared] = field(default_factory=dict)

    async def statement(self, sql: str, wide: tuple[int, ...] = (), clock: tuple[int, ...] = ()) -> _Prepared:
        found = self.prepared.get((sql, wide, clock))
        if found is None:
            if len(self.prepared) >= MAX_PREPARED:  # e.g. `IN (?, ?, …)` of every length: start again
                self.prepared.clear()
            stmt = await self.conn.prepare(placeholders(sql, wide, clock))
            types = [t.name for t in stmt.get_parameters()]
            encoders = [_ENCODERS.get(t, _identity) for t in types]
            found = self.prepared[(sql, wide, clock)] = _Prepared(stmt, types, encoders)
        return found

    async def bind(self, sql: str, params: Sequence[Any], clock: datetime | None = None) -> tuple[Any, list[Any]]:
        """The prepared statement and its encoded parameters; a parameter that is `clock` itself (the batch's
        "now") is the database's clock instead."""
        at: tuple[int, ...] = ()
        if clock is not None:
            at = tuple(i + 1 for i, v in enumerate(params) if v is clock)
            if at:
                params = [v for v in params if v is not clock]
        p = await self.statement(sql, (), at)
        if len(params) != len(p.types):
            raise ValueError(f"{len(params)} parameters for {len(p.types)} placeholders: {sql}")
        # An integer too big for the column's type (an id of 2^40 from a URL): compared as a bigint, as
        # SQLite would (it matches nothing), rather than refused by the driver.
        wide = tuple(i + 1 for i, (t, v) in enumerate(zip(p.types, params, strict=True)) if _too_wide(t, v))
        if wide:
            p = await self.statement(sql, wide, at)
        return p.stmt, [enc(v) for enc, v in zip(p.encoders, params, strict=True)]


@dataclass(frozen=True, slots=True)
class _Prepared:
    stmt: Any  # asyncpg's PreparedStatement
    types: list[str]
    encoders: list[Callable[[Any], Any]]


_INT_LIMITS = {"int2": 2**15, "int4": 2**31}


def _too_wide(type_name: str, value: Any) -> bool:
    limit = _INT_LIMITS.get(type_name)
    return limit is not None and isinstance(value, int) and not -limit <= value < limit


IDLE_IN_TRANSACTION_MS = 10_000


class _Pool:
    """Up to `size` connections, opened on first need; a broken one is dropped and replaced."""

    def __init__(self, dsn: str, size: int, name: str) -> None:
        self._dsn = dsn
        self._size = size
        self._name = name
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._free = asyncio.Semaphore(size)
        self._closed = False

    async def acquire(self) -> _Conn:
        await self._free.acquire()
        try:
            while self._idle:
                c = self._idle.pop()
                if not c.conn.is_closed():
                    return c
                self._all.discard(c)
            settings = {
                "application_name": self._name,  # event rows record it (`events.origin`)
                # A process frozen inside a transaction (SIGSTOP, a VM paused) would hold its run rows locked
                # for as long as it stays frozen, and every other process's sweep would wait on them: the
                # server ends such a transaction (and the session) instead. An engine's transactions are
                # batches sent at once; nothing of ours stays idle inside one for seconds.
                "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
            }
            c = _Conn(await asyncpg.connect(self._dsn, statement_cache_size=0, server_settings=settings))
            self._all.add(c)
            return c
        except BaseException:
            self._free.release()
            raise

    def release(self, c: _Conn, *, broken: bool = False) -> None:
        if broken or self._closed or c.conn.is_closed() or c.conn.is_in_transaction():
            self._all.discard(c)
            c.conn.terminate()
        else:
            self._idle.append(c)
        self._free.release()

    async def close(self) -> None:
        self._closed = True
        for c in list(self._all):
            try:
                await asyncio.wait_for(c.conn.close(), 5)
            except Exception:
                c.conn.terminate()
        self._all.clear()
        self._idle.clear()


async def _run_stmts(c: _Conn, stmts: Sequence[Stmt], clock: datetime | None = None) -> BatchResult:
    result = BatchResult(ok=True)
    for index, stmt in enumerate(stmts):
        rows: list[tuple[Any, ...]] = []
        if stmt.many is not None and not stmt.guard:
            # Nothing to check per row: sent in one pipelined round trip (a run's step rows at its creation).
            count = await _execute_many(c, stmt.sql, [_refs(params, result.rows) for params in stmt.many], clock)
        elif stmt.many is not None:
            count = 0
            for params in stmt.many:
                ps, args = await c.bind(stmt.sql, _refs(params, result.rows), clock)
                await ps.fetch(*args)
                count += _count(ps.get_statusmsg(), ())
        else:
            ps, args = await c.bind(stmt.sql, _refs(stmt.params, result.rows), clock)
            rows = [tuple(r) for r in await ps.fetch(*args)]
            count = _count(ps.get_statusmsg(), rows)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %r -> %d", stmt.sql, stmt.many if stmt.many else stmt.params, count)
        if stmt.guard and not guard_holds(stmt, count, rows):
            raise GuardFailed(index)
        result.rowcounts.append(count)
        result.rows.append(rows)
    return result


async def _execute_many(c: _Conn, sql: str, rows: list[list[Any]], clock: datetime | None) -> int:
    """Every parameter row of an unguarded statement, pipelined (asyncpg's `executemany`: one round trip
    rather than one per row). It gives no row counts: the count is that of the parameter rows."""
    if not rows:
        return 0
    bound = [await c.bind(sql, params, clock) for params in rows]
    first = bound[0][0]
    if all(stmt is first for stmt, _ in bound):
        await first.executemany([args for _, args in bound])
    else:  # an integer too wide for its column in some row: those rows have a statement of their own
        for stmt, args in bound:
            await stmt.fetch(*args)
    return len(rows)


def _refs(params: Sequence[Any], rows: list[list[tuple[Any, ...]]]) -> list[Any]:
    return [rows[v.index][0][0] if isinstance(v, Ref) else v for v in params]


def _lock_runs_sql(batches: Sequence[Batch]) -> str | None:
    """The lock of every run the batches touch, in id order (ids are integers: written into the text, so
    that the lock travels with the BEGIN in one round trip)."""
    runs = sorted({int(r) for b in batches for r in b.lock_runs})
    if not runs:
        return None
    return f"SELECT id FROM runs WHERE id IN ({', '.join(str(r) for r in runs)}) ORDER BY id FOR NO KEY UPDATE"


def _savepoint(i: int) -> str:
    return f"SAVEPOINT batch_{i}"


async def _run_group(c: _Conn, batches: Sequence[Batch], begin: str = "BEGIN") -> list[Outcome]:
    """The batches in one transaction. Round trips are what a step costs here, so the control statements
    travel together: BEGIN with the lock of every run the batches touch (taken once, at the top of the
    transaction, where a batch rolled back to its savepoint cannot release it) and the first savepoint;
    each savepoint's release with the next one; the last with COMMIT."""
    several = len(batches) > 1
    head = [begin]
    lock = _lock_runs_sql(batches)
    if lock is not None:
        head.append(lock)
    if several:
        head.append(_savepoint(0))
    try:
        try:
            await c.conn.execute("; ".join(head))
        except asyncpg.PostgresError as exc:
            if isinstance(exc, asyncpg.DeadlockDetectedError):
                raise
            await c.conn.execute("ROLLBACK")
            failure: Exception = exc  # each batch fails with it, as it would have at its own lock
            return [failure for _ in batches]
        outcomes: list[Outcome] = []
        for i, batch in enumerate(batches):
            outcome = await _run_one(c, batch)
            outcomes.append(outcome)
            control: list[str] = []
            failed = not (isinstance(outcome, BatchResult) and outcome.ok)
            if failed:
                control.append(f"ROLLBACK TO SAVEPOINT batch_{i}" if several else "ROLLBACK")
            if several and i + 1 < len(batches):
                control += [f"RELEASE SAVEPOINT batch_{i}", _savepoint(i + 1)]
            elif several or not failed:
                control.append("COMMIT")  # releases the savepoints
            await c.conn.execute("; ".join(control))
        return outcomes
    except BaseException:
        if not c.conn.is_closed() and c.conn.is_in_transaction():
            await c.conn.execute("ROLLBACK")
        raise


async def _run_one(c: _Conn, batch: Batch) -> Outcome:
    """One batch's statements; a failed guard or a refused statement is its outcome (the caller rolls it
    back); a deadlock ends the whole transaction (retried)."""
    try:
        return await _run_stmts(c, batch.stmts, batch.clock)
    except GuardFailed as exc:
        return BatchResult(ok=False, failed_guard=exc.index)
    except asyncpg.DeadlockDetectedError:
        raise
    except asyncpg.IntegrityConstraintViolationError as exc:
        return StoreIntegrityError(str(exc))
    except asyncpg.PostgresError as exc:
        failure: Exception = exc  # asyncpg has no type hints
        return failure


class PostgresDatabase:
    kind = "postgresql"
    dialect = POSTGRESQL

    def __init__(
        self,
        url: str,
        *,
        writers: int = WRITERS,
        readers: int = READERS,
        host_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.host_clock = host_clock  # a test sets one that is off
        self._offset = timedelta(0)  # the server's clock less this host's
        self._synced_at: float | None = None  # monotonic time of the last measure
        self._syncing: asyncio.Task[None] | None = None
        self.url = url
        self.hub = Hub()
        self._dsn = dsn(url)
        self.instance = pg_feed.new_instance()  # tells this process's event rows and notifications from others'
        name = pg_feed.application_name(self.instance)
        self._writers = _Pool(self._dsn, writers, name)
        self._readers = _Pool(self._dsn, readers, name)
        self._engine_readers = _Pool(self._dsn, ENGINE_READERS, name)
        self._begin = "BEGIN"
        self._notifier = pg_feed.Notifier(self._dsn, self.instance)
        self._live = pg_feed.LiveSender(self._dsn, self.instance)
        self.feed: pg_feed.EventFeed | None = None

    def refuse_writes(self, on: bool) -> None:
        """Start the next write transactions READ ONLY (PostgreSQL then refuses each write), to see how
        the engine copes with a database that refuses every write."""
        self._begin = "BEGIN READ ONLY" if on else "BEGIN"

    # --- reads --------------------------------------------------------------------------------

    async def fetch(self, sql: str, params: Sequence[Any] = (), *, engine: bool = False) -> list[dict[str, Any]]:
        pool = self._engine_readers if engine else self._readers
        c = await pool.acquire()
        broken = True
        try:
            ps, args = await c.bind(sql, params)
            rows = [_row(r) for r in await ps.fetch(*args)]
            broken = False
            return rows
        except asyncpg.PostgresError:
            broken = False  # the query failed; the connection is fine
            raise
        finally:
            pool.release(c, broken=broken)

    # --- writes -------------------------------------------------------------------------------

    async def run_batches(self, batches: Sequence[Batch]) -> list[Outcome]:
        # Shielded: a caller that gives up (cancelled) must not cut a commit in half on the wire, nor
        # leave it unpublished.
        return await asyncio.shield(self._commit_and_publish(batches))

    async def _commit_and_publish(self, batches: Sequence[Batch]) -> list[Outcome]:
        outcomes = await self._commit(batches)
        wrote_events = False
        for batch, outcome in zip(batches, outcomes, strict=True):
            if batch.on_commit is not None and isinstance(outcome, BatchResult) and outcome.ok:
                wrote_events = True  # a batch with a callback publishes the event rows it wrote
                try:
                    batch.on_commit(outcome)
                except Exception:
                    log.exception("a commit callback failed; the commit stands")
        if wrote_events:
            self._notifier.committed()
        return outcomes

    async def _commit(self, batches: Sequence[Batch]) -> list[Outcome]:
        for attempt in range(DEADLOCK_RETRIES + 1):
            c = await self._writers.acquire()
            broken = True
            try:
                outcomes = await _run_group(c, batches, self._begin)
                broken = False
                return outcomes
            except asyncpg.DeadlockDetectedError:
                broken = False
                if attempt == DEADLOCK_RETRIES:
                    raise
                log.info("deadlock between two transactions; trying again")
            except asyncpg.PostgresError:
                broken = False
                raise
            finally:
                self._writers.release(c, broken=broken)
        raise AssertionError("unreachable")

    # --- the clock ---------------------------------------------------------------------------

    def now(self) -> datetime:
        if self._synced_at is not None and time.monotonic() - self._synced_at > CLOCK_RESYNC_S:
            self._resync_soon()
        return self.host_clock() + self._offset

    async def sync_clock(self) -> timedelta:
        """Measure the server's clock against this host's (the reading taken halfway through the round
        trip); returns the offset, which `now` adds from then on."""
        c = await self._readers.acquire()
        broken = True
        try:
            before = self.host_clock()
            server: datetime = await c.conn.fetchval("SELECT statement_timestamp()")
            after = self.host_clock()
            broken = False
        finally:
            self._readers.release(c, broken=broken)
        self._offset = server - (before + (after - before) / 2)
        self._synced_at = time.monotonic()
        return self._offset

    def _resync_soon(self) -> None:
        if self._syncing is not None and not self._syncing.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a worker thread: the next reading on the event loop measures it
        self._syncing = loop.create_task(self._resync(), name="stepdeck-clock")

    async def _resync(self) -> None:
        try:
            await self.sync_clock()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._synced_at = time.monotonic()  # the last offset stands; measured again later
            log.warning("could not read the database's clock (%s); keeping the last offset", exc)

    def check_file(self) -> str | None:
        """A server, not a file: nothing can remove it from under this process."""
        return None

    def run_batches_blocking(self, batches: Sequence[Batch]) -> list[Outcome]:
        return asyncio.run_coroutine_threadsafe(self.run_batches(batches), self._loop).result()

    def deliver_committed(self) -> None:
        """Nothing waits: batches commit on the event loop and deliver there."""

    async def start_feed(self, deliver: pg_feed.Deliver, deliver_live: pg_feed.Deliver) -> None:
        """Hand the event rows other processes commit to `deliver`, and the notices they send to
        `deliver_live` (one listening connection per process)."""
        if self.feed is None:
            feed = pg_feed.EventFeed(self._dsn, self.instance, deliver, deliver_live)
            await feed.start()
            self.feed = feed

    def send_live(self, notice: ChangeJson) -> bool:
        return self._live.offer(notice)

    async def close(self) -> None:
        if self._syncing is not None:
            self._syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._syncing
        if self.feed is not None:
            await self.feed.close()
            self.feed = None
        await self._notifier.close()
        await self._live.close()
        await self._writers.close()
        await self._readers.close()
        await self._engine_readers.close()
