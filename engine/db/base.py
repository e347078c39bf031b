"""What every database backend of the engine takes and gives: statements, batches, results.

A batch is a short list of statements run in one transaction. A statement marked `guard` must change
at least one row (a `many` statement: one per parameter row), or the whole batch is rolled back: that
is how a compare-and-set (`UPDATE … WHERE id = ? AND status = ?`) and its event rows commit together
or not at all. SQL is written once, portably, with `?` placeholders; a backend turns them into its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NewType, Protocol

from engine.hub import ChangeJson, Hub
from models.errors import StepdeckError


@dataclass(frozen=True, slots=True)
class Ref:
    """A parameter taken from an earlier statement of the same batch: its first returned value."""

    index: int


# A value encoded as JSON text already: both backends store it as it is (a definition snapshot is encoded
# once per definition, not once per run).
JsonText = NewType("JsonText", str)


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


# Called on the event loop once the batch has committed, in commit order across every batch of the
# process (so that what it publishes reaches listeners in the order of the event ids). Only batches that
# write event rows have one: a backend shared by several processes tells the others after such a commit.
OnCommit = Callable[[BatchResult], None]

# Takes event rows (dicts of the `events` columns) that other processes committed.
DeliverEvents = Callable[[list[dict[str, Any]]], None]

# Takes ephemeral notices (progress, log lines, streamed text, in `Change.to_json` shape) that other
# processes sent.
DeliverLive = Callable[[list[dict[str, Any]]], None]


@dataclass(frozen=True, slots=True)
class Batch:
    """`lock_runs`: the runs whose rows a backend with concurrent writers locks before the statements
    (so that guards reading other rows of those runs see every earlier transition of them).

    `clock`: the datetime that stands for "now" in the parameters of the statements. A backend shared by
    several hosts (PostgreSQL) writes its own clock (`now()`) wherever this very object is a parameter, so
    that the times of every process come from one clock; SQLite writes the value itself."""

    stmts: Sequence[Stmt]
    on_commit: OnCommit | None = None
    lock_runs: Sequence[int] = ()
    clock: datetime | None = None


class GuardFailed(StepdeckError):
    def __init__(self, index: int) -> None:
        super().__init__(f"guard {index} matched no row")
        self.index = index


class StoreIntegrityError(StepdeckError):
    """A unique or foreign-key constraint refused the batch (nothing was committed)."""


def guard_holds(stmt: Stmt, count: int, rows: list[tuple[Any, ...]]) -> bool:
    """A guarded `many` must change every row it names; a single statement at least one."""
    if stmt.many is not None:
        return count >= len(stmt.many)
    return count >= 1 or bool(rows)


Outcome = BatchResult | Exception


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs in the SQL of the backends, for the few queries that need it."""

    json_array_length: str  # the function giving the length of a JSON array column
    like_ignores_case: bool  # LIKE ignores the case of ASCII letters, and JSON columns are text


SQLITE = Dialect(json_array_length="json_array_length", like_ignores_case=True)
POSTGRESQL = Dialect(json_array_length="jsonb_array_length", like_ignores_case=False)


class _HandOver(threading.local):
    active = False


_hand_over = _HandOver()


def loop_woken_by_caller(active: bool) -> None:
    """Set (True, then False in a `finally`) in a worker thread that hands its result to the event loop
    itself, and calls the database's `deliver_committed` there first: what it commits meanwhile is
    delivered then, so that the loop is woken once per step instead of twice (once for the commit, once
    for the result). A plain flag, not a context manager: it is set twice per step of a chain."""
    _hand_over.active = active


def caller_wakes_loop() -> bool:
    """Whether this thread set `loop_woken_by_caller`."""
    return _hand_over.active


class Database(Protocol):
    """The engine's connection to its database: atomic batches of writes, and reads.

    Reads never queue behind writes (they use connections of their own), and a read started after a
    batch committed sees it.
    """

    kind: str  # "sqlite" or "postgresql"
    dialect: Dialect
    hub: Hub  # this connection's changes (its commits, and other processes' through the feed), made with it

    async def run_batches(self, batches: Sequence[Batch]) -> list[Outcome]:
        """Independent batches, each all-or-nothing, committed together where the backend can."""
        ...

    def run_batches_blocking(self, batches: Sequence[Batch]) -> list[Outcome]:
        """`run_batches` from a worker thread (never the event loop): the work that ran there commits
        its own outcome, without a round trip through the loop."""
        ...

    def deliver_committed(self) -> None:
        """On the event loop: run the commit callbacks (and wake the waiters) of every batch committed so
        far and not yet delivered, in commit order (see `loop_woken_by_caller`)."""
        ...

    async def fetch(self, sql: str, params: Sequence[Any] = (), *, engine: bool = False) -> list[dict[str, Any]]:
        """Rows of a read query as dicts; `engine` reads use a connection no viewer can hold up."""
        ...

    async def start_feed(self, deliver: DeliverEvents, deliver_live: DeliverLive) -> None:
        """Give `deliver` the event rows other processes commit from now on, each once, and `deliver_live`
        the ephemeral notices they send (where several processes can write: PostgreSQL; nothing on SQLite)."""
        ...

    def send_live(self, notice: ChangeJson) -> bool:
        """Send an ephemeral notice of this process (a progress, a log line, streamed text) to the others
        that follow the feed: soon, batched, never on the caller's path (nothing on SQLite). False once
        the database is closed: the caller stops sending."""
        ...

    def now(self) -> datetime:
        """The database's clock, as well as this process knows it: the time the engine gives to what it
        writes (a retry's due time, a notification's next try, a prune's cutoff, an account's row). One
        machine's SQLite is the process's own clock; PostgreSQL's is the server's, measured on open and
        again every CLOCK_RESYNC_S (to within half a round trip), so that hosts whose clocks drift apart
        still write one clock."""
        ...

    def check_file(self) -> str | None:
        """Why the database this process opened is no longer the one at its URL (e.g. its file was
        removed), or None; once it returns a reason, writes are refused."""
        ...

    async def close(self) -> None: ...
