"""Atomic batches of SQL statements and reads, on the database of this process (`engine.db.current()`).

The write path of `engine/transitions.py`: a batch is a short list of statements run in one
transaction; a statement marked `guard` must change at least one row or the whole batch is rolled
back (see `engine/db/base.py`). Batches submitted while a commit is in flight are committed together
(group commit); each still commits or fails alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from engine.db import current
from engine.db.base import Batch, BatchResult, GuardFailed, Outcome, Ref, Stmt, StoreIntegrityError

__all__ = [
    "Batch",
    "BatchResult",
    "GuardFailed",
    "Outcome",
    "Ref",
    "Stmt",
    "StoreIntegrityError",
    "fetch",
    "run_batch",
    "run_batches",
    "run_batches_blocking",
]


def _batches(batches: Sequence[Sequence[Stmt] | Batch]) -> list[Batch]:
    return [b if isinstance(b, Batch) else Batch(b) for b in batches]


async def run_batch(stmts: Sequence[Stmt], *, clock: datetime | None = None) -> BatchResult:
    """Run the statements in one transaction; roll back and report when a guard matches nothing.
    `clock`: the parameter that means "now" (`Batch.clock`)."""
    result = (await current().run_batches([Batch(stmts, clock=clock)]))[0]
    if isinstance(result, Exception):
        raise result
    return result


async def run_batches(batches: Sequence[Sequence[Stmt] | Batch]) -> list[Outcome]:
    """Independent batches, in order, each all-or-nothing; they may share one commit.

    A batch that fails (guard, constraint, a value the database refuses) fails alone; an error that
    ends the transaction itself (disk full, I/O) fails them all (raised).
    """
    return await current().run_batches(_batches(batches))


def run_batches_blocking(batches: Sequence[Sequence[Stmt] | Batch]) -> list[Outcome]:
    """`run_batches` from a worker thread: the commit happens in that thread (no event-loop round trip)."""
    return current().run_batches_blocking(_batches(batches))


async def fetch(sql: str, params: Sequence[Any] = (), *, engine: bool = False) -> list[dict[str, Any]]:
    """Rows of a read query as dicts (placeholders `?`); `engine` reads never wait behind a viewer's."""
    return await current().fetch(sql, params, engine=engine)
