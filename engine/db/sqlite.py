"""The engine's SQLite backend: one writer connection with group commit, and reader connections.

Writes. Every batch is queued; whoever commits (the *leader*) takes everything queued at that moment
and commits it in one transaction (`BEGIN IMMEDIATE` … `COMMIT`, one WAL append), each batch under
its own savepoint only when the transaction holds more than one. The leader is the calling thread
when it is a worker thread (a sync step function commits its own outcome where it ran: no round trip
through the event loop), else a dedicated writer thread. After each commit, the batches' `on_commit`
callbacks run on the event loop in commit order, then the waiting coroutines resume.

Reads. A small pool of read-only connections for pages and the API, and one for the engine, each in
a thread of its own: WAL lets them read while the writer writes, so a viewer never queues in front
of the engine's commits, and the engine's reads never wait behind a viewer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from engine import logs
from engine.db.base import (
    SQLITE,
    Batch,
    BatchResult,
    DeliverEvents,
    DeliverLive,
    GuardFailed,
    Outcome,
    Ref,
    Stmt,
    StoreIntegrityError,
    caller_wakes_loop,
    guard_holds,
)
from engine.hub import ChangeJson, Hub
from models.db import frozen_flags
from models.errors import DatabaseUnavailable

log = logs.logger(__name__)

MAX_GROUP = 64  # batches in one transaction at most (bounds how long one commit holds the lock)
READERS = 2


_json_text = json.JSONEncoder(ensure_ascii=False).encode  # made once: `json.dumps` with options makes one per call


def encode(value: Any) -> Any:
    """A Python value as a SQLite parameter, in the formats Tortoise reads back."""
    if isinstance(value, datetime):
        return value.isoformat(" ")
    if isinstance(value, (dict, list)):
        return _json_text(value) if value else ("{}" if isinstance(value, dict) else "[]")
    if isinstance(value, StrEnum):
        return value.value  # the text SQLite would bind for it, without its adapter lookup
    return value


# Parameters SQLite takes as they are: most of a batch's, bound without a call.
_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})
# Text enums (statuses) met so far: bound as their value, without a call (SQLite would look up an adapter).
_TEXT_ENUMS: set[type] = set()


def _bind(params: Sequence[Any], rows: list[list[tuple[Any, ...]]], encoded: dict[int, Any]) -> list[Any]:
    """The parameters of one statement (or one row of a `many`), as SQLite takes them. `encoded` holds what
    was encoded for the batch so far, by object (a batch's clock, its JSON values): every such value is
    held by the batch while it runs, so no other object takes its id. A loop, not a call per parameter: a
    step's commit binds some forty."""
    out: list[Any] = []
    for v in params:
        kind = type(v)
        if kind in _PLAIN:
            out.append(v)
        elif kind in _TEXT_ENUMS:
            out.append(v._value_)
        elif (found := encoded.get(id(v), encoded)) is not encoded:
            out.append(found)
        else:
            out.append(_encoded(v, rows, encoded))
    return out


def _encoded(value: Any, rows: list[list[tuple[Any, ...]]], encoded: dict[int, Any]) -> Any:
    if isinstance(value, Ref):
        return encode(rows[value.index][0][0])  # by the batch's rows so far: never kept in `encoded`
    if isinstance(value, StrEnum):
        _TEXT_ENUMS.add(type(value))
        return value.value
    found = encoded[id(value)] = encode(value)
    return found


def _run_stmts(conn: sqlite3.Connection, stmts: Sequence[Stmt], result: BatchResult | None = None) -> BatchResult:
    """Run the statements, filling `result` as they go (on an error, its `rowcounts` tell how many ran)."""
    if log.isEnabledFor(logging.DEBUG):
        for stmt in stmts:
            log.debug("%s %r", stmt.sql, stmt.many if stmt.many else stmt.params)
    result = result if result is not None else BatchResult(ok=True)
    encoded: dict[int, Any] = {}
    for index, stmt in enumerate(stmts):
        if stmt.many is not None:
            cur = conn.executemany(stmt.sql, [_bind(row, result.rows, encoded) for row in stmt.many])
            rows: list[tuple[Any, ...]] = []
        else:
            cur = conn.execute(stmt.sql, _bind(stmt.params, result.rows, encoded))
            rows = cur.fetchall()
        count = cur.rowcount if cur.rowcount >= 0 else len(rows)
        if stmt.guard and not guard_holds(stmt, count, rows):
            raise GuardFailed(index)
        result.rowcounts.append(count)
        result.rows.append(rows)
    return result


def _run_alone(conn: sqlite3.Connection, stmts: Sequence[Stmt]) -> Outcome:
    """The only batch of its transaction: a failure rolls the whole transaction back."""
    try:
        result = _run_stmts(conn, stmts)
    except GuardFailed as exc:
        conn.execute("ROLLBACK")
        return BatchResult(ok=False, failed_guard=exc.index)
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK")
        return StoreIntegrityError(str(exc))
    except Exception as exc:
        if not conn.in_transaction:
            raise  # the transaction is gone (disk full, I/O): the caller sees the database's error
        conn.execute("ROLLBACK")
        return exc
    conn.execute("COMMIT")
    return result


def _run_savepointed(conn: sqlite3.Connection, stmts: Sequence[Stmt]) -> Outcome:
    """One batch among several in a transaction, under a savepoint so that it can fail alone."""
    conn.execute("SAVEPOINT batch")
    try:
        result = _run_stmts(conn, stmts)
    except Exception as exc:
        if not conn.in_transaction:
            raise  # the transaction itself ended: every batch of the group fails
        conn.execute("ROLLBACK TO batch")
        conn.execute("RELEASE batch")
        if isinstance(exc, GuardFailed):
            return BatchResult(ok=False, failed_guard=exc.index)
        return StoreIntegrityError(str(exc)) if isinstance(exc, sqlite3.IntegrityError) else exc
    conn.execute("RELEASE batch")
    return result


def _run_plain(conn: sqlite3.Connection, stmts: Sequence[Stmt]) -> Outcome | None:
    """One batch among several, without a savepoint: None when it failed after writing something (the
    transaction must then be done again with savepoints). A failure at its first statement, when that is a
    single statement, wrote nothing: SQLite undoes a failing statement's own changes, and a guard that
    fails matched no row."""
    result = BatchResult(ok=True)
    try:
        return _run_stmts(conn, stmts, result)
    except Exception as exc:
        if not conn.in_transaction:
            raise  # the transaction itself ended: every batch of the group fails
        if result.rowcounts or stmts[0].many is not None:
            return None
        if isinstance(exc, GuardFailed):
            return BatchResult(ok=False, failed_guard=exc.index)
        return StoreIntegrityError(str(exc)) if isinstance(exc, sqlite3.IntegrityError) else exc


def run_group(conn: sqlite3.Connection, batches: Sequence[Sequence[Stmt]]) -> list[Outcome]:
    """Independent batches in one transaction: one commit (one WAL append) for all of them.

    Batches run without savepoints as long as none fails part-way (the common case, and a guard is the
    first statement of its batch); when one does, the transaction is rolled back and done again with a
    savepoint around each batch, so that it fails alone."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if len(batches) == 1:
            return [_run_alone(conn, batches[0])]
        outcomes: list[Outcome] = []
        for stmts in batches:
            outcome = _run_plain(conn, stmts)
            if outcome is None:
                break
            outcomes.append(outcome)
        else:
            conn.execute("COMMIT")
            return outcomes
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        outcomes = [_run_savepointed(conn, stmts) for stmts in batches]
        conn.execute("COMMIT")
        return outcomes
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def query(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    log.debug("%s %r", sql, params)
    cur = conn.execute(sql, [encode(v) for v in params])
    rows = cur.fetchall()
    if not rows:
        return []
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in rows]


def connect(path: str, pragmas: Mapping[str, str], *, read_only: bool) -> sqlite3.Connection:
    busy_ms = int(pragmas.get("busy_timeout", "10000"))
    conn = sqlite3.connect(path, timeout=busy_ms / 1000, isolation_level=None, check_same_thread=False)
    for name, value in pragmas.items():
        if name == "journal_mode" and read_only:
            continue  # the writer sets it; it is a property of the file
        conn.execute(f"PRAGMA {name} = {value}")
    if read_only:
        conn.execute("PRAGMA query_only = ON")
    return conn


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return  # its caller gave up (cancelled): the work was done all the same
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class _ReaderPool:
    """Threads with a read-only connection each, taking read jobs from one queue."""

    def __init__(self, open_conn: Callable[[], sqlite3.Connection], size: int, name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[tuple[str, Sequence[Any], asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, args=(open_conn,), name=f"{name}-{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self, open_conn: Callable[[], sqlite3.Connection]) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while (job := self._jobs.get()) is not None:
                sql, params, future = job
                rows: list[dict[str, Any]] | None = None
                error: BaseException | None = None
                try:
                    conn = conn or open_conn()
                    rows = query(conn, sql, params)
                except BaseException as exc:
                    error = exc
                self._call(_settle, future, rows, error)
        finally:
            if conn is not None:
                conn.close()

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(fn, *args)

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        future: asyncio.Future[list[dict[str, Any]]] = self._loop.create_future()
        self._jobs.put((sql, params, future))
        return await future

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5)


@dataclass(eq=False, slots=True)
class _Ticket:
    """Batches waiting to be committed, and how their submitter learns the outcome."""

    batches: Sequence[Batch]
    future: asyncio.Future[list[Outcome]] | None = None  # a coroutine on the event loop waits
    # A thread waits: held until the ticket is done (each waiter is woken alone, not every waiting thread
    # on every commit).
    waiter: threading.Lock | None = None
    outcomes: list[Outcome] | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.outcomes is not None or self.error is not None


class SqliteDatabase:
    kind = "sqlite"
    dialect = SQLITE

    def __init__(self, path: str, pragmas: Mapping[str, str], *, readers: int = READERS) -> None:
        self._loop = asyncio.get_running_loop()
        self.path = path
        self.hub = Hub()
        self._pragmas = dict(pragmas)
        self._writer = connect(path, self._pragmas, read_only=False)
        self._writer_lock = threading.Lock()  # uncontended in a commit (one leader at a time); see `pragma`
        self._queue_lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._busy = False  # some thread leads: it commits until the queue is empty or hands over
        self._wake: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._drainer = threading.Thread(target=self._drain, name="stepdeck-db-writer", daemon=True)
        self._drainer.start()
        self._readers = _ReaderPool(self._open_reader, readers, "stepdeck-db-read")
        self._engine_reader = _ReaderPool(self._open_reader, 1, "stepdeck-db-engine-read")
        self._file_id = _file_id(path)
        self.lost: str | None = None
        self._frozen = _FrozenWatch(path)
        self._frozen_reported: str | None = None
        # Committed groups whose callbacks and waiters have not run yet, in commit order, and whether the
        # loop has been asked to deliver them (`deliver_committed`).
        self._committed: list[list[_Ticket]] = []
        self._delivery_lock = threading.Lock()
        self._delivery_asked = False

    async def start_feed(self, deliver: DeliverEvents, deliver_live: DeliverLive) -> None:
        """Nothing: the other processes on a SQLite file (a headless `run`) are found by polling."""

    def send_live(self, notice: ChangeJson) -> bool:
        """Nothing: no other process follows this one's notices."""
        return False

    def now(self) -> datetime:
        return datetime.now(UTC)  # one machine: the process's clock is the database's

    def check_file(self) -> str | None:
        """Why the file this process opened is no longer the database at its path (removed or replaced,
        as by deleting `data/` while serving), or None. Once lost, every write is refused: what would be
        written to an unlinked file is lost at exit, silently."""
        if self.lost is None:
            now = _file_id(self.path)
            if now != self._file_id:
                how = "removed" if now is None else "replaced by another file"
                self.lost = (
                    f"the database file {self.path} was {how} while this process was using it: "
                    "no more work is accepted; restart the process"
                )
                log.critical("%s", self.lost)
        if self.lost:
            return self.lost
        frozen = self._frozen.reason()
        if frozen != self._frozen_reported:  # said once when it starts, and when it ends
            self._frozen_reported = frozen
            if frozen:
                log.error("%s: every read and write fails until it is writable again", frozen)
            else:
                log.warning("the database files are writable again")
        return frozen

    def _open_reader(self) -> sqlite3.Connection:
        return connect(self.path, self._pragmas, read_only=True)

    # --- reads --------------------------------------------------------------------------------

    async def fetch(self, sql: str, params: Sequence[Any] = (), *, engine: bool = False) -> list[dict[str, Any]]:
        if frozen := self._frozen.reason():  # a reader writes its read mark into the shared memory too
            raise DatabaseUnavailable(frozen)
        return await (self._engine_reader if engine else self._readers).fetch(sql, params)

    # --- writes -------------------------------------------------------------------------------

    async def run_batches(self, batches: Sequence[Batch]) -> list[Outcome]:
        future: asyncio.Future[list[Outcome]] = self._loop.create_future()
        with self._queue_lock:
            self._queue.append(_Ticket(batches, future))
            if not self._busy:
                self._busy = True
                self._wake.put(True)
        return await future

    def run_batches_blocking(self, batches: Sequence[Batch]) -> list[Outcome]:
        ticket = _Ticket(batches, waiter=threading.Lock())
        assert ticket.waiter is not None
        ticket.waiter.acquire()
        with self._queue_lock:
            self._queue.append(ticket)
            lead = not self._busy
            self._busy = True
        if lead:
            self._lead(until=ticket)
        else:
            ticket.waiter.acquire()  # released by the thread that commits it
        if ticket.error is not None:
            raise ticket.error
        assert ticket.outcomes is not None
        return ticket.outcomes

    def _drain(self) -> None:
        while self._wake.get():
            self._lead(until=None)

    def _lead(self, until: _Ticket | None) -> None:
        """Commit rounds until the queue is empty, or (a worker thread) until `until` is done, then
        hand the rest to the writer thread."""
        while True:
            with self._queue_lock:
                if until is not None and until.done:
                    if self._queue:
                        self._wake.put(True)  # the writer thread leads on; `busy` stays set
                    else:
                        self._busy = False
                    return
                group = self._queue[:MAX_GROUP]
                del self._queue[:MAX_GROUP]
                if not group:
                    self._busy = False
                    return
            try:
                self._commit(group)
            finally:
                for ticket in group:
                    if ticket.waiter is not None and ticket is not until:
                        ticket.waiter.release()

    def pragma(self, name: str, value: str) -> None:
        """Set a PRAGMA on the writer connection between commits (e.g. `query_only`, to see how the engine
        copes with a database that refuses every write)."""
        if not name.isidentifier() or not value.replace("-", "").isalnum():
            raise ValueError(f"not a pragma: {name} = {value}")
        with self._writer_lock:
            self._writer.execute(f"PRAGMA {name} = {value}")

    def _commit(self, group: list[_Ticket]) -> None:
        error: BaseException | None = None
        with self._writer_lock:
            try:
                if problem := self.check_file():
                    raise DatabaseUnavailable(problem)
                outcomes = run_group(self._writer, [b.stmts for t in group for b in t.batches])
            except BaseException as exc:
                error = exc
            start = 0
            for ticket in group:
                if error is not None:
                    ticket.error = error
                else:
                    ticket.outcomes = outcomes[start : start + len(ticket.batches)]
                    start += len(ticket.batches)
            with self._delivery_lock:  # under the writer lock: queued in commit order
                self._committed.append(group)
                ask = not self._delivery_asked and not caller_wakes_loop()
                self._delivery_asked = self._delivery_asked or ask
        if ask:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
                self._loop.call_soon_threadsafe(self.deliver_committed)

    def deliver_committed(self) -> None:
        with self._delivery_lock:
            groups, self._committed = self._committed, []
            self._delivery_asked = False
        for group in groups:
            _deliver(group)

    async def close(self) -> None:
        """Finish what is queued, then close every connection."""
        for _ in range(500):  # a commit waits at most for the busy timeout; do not hang on a stuck one
            with self._queue_lock:
                if not self._busy:
                    break
            await asyncio.sleep(0.01)
        self._wake.put(None)
        await asyncio.to_thread(self._drainer.join, 5)
        self._readers.close()
        self._engine_reader.close()
        self._writer.close()
        self._frozen.close()


class _FrozenWatch:
    """Whether a file of the database was made immutable or append-only (`chattr +i`, `+a`): see
    `models.db.frozen_flags`. Its files are held open so that each check is one system call."""

    def __init__(self, path: str) -> None:
        self._fds: list[tuple[str, int]] = []
        for name in (path, f"{path}-wal", f"{path}-shm"):
            with contextlib.suppress(OSError):
                self._fds.append((name, os.open(name, os.O_RDONLY | os.O_CLOEXEC)))

    def reason(self) -> str | None:
        for name, fd in self._fds:
            if frozen_flags(fd):
                return f"the database file {name} is immutable or append-only (chattr): it cannot be written"
        return None

    def close(self) -> None:
        for _, fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _deliver(group: list[_Ticket]) -> None:
    """On the event loop, in commit order: the batches' `on_commit` callbacks, then their waiters."""
    for ticket in group:
        if ticket.outcomes is not None:
            for batch, outcome in zip(ticket.batches, ticket.outcomes, strict=True):
                if batch.on_commit is not None and isinstance(outcome, BatchResult) and outcome.ok:
                    try:
                        batch.on_commit(outcome)
                    except Exception:
                        log.exception("a commit callback failed; the commit stands")
        if ticket.future is not None:
            _settle(ticket.future, ticket.outcomes, ticket.error)
