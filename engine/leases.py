"""Leases on the database clock, where several processes share one database (PostgreSQL).

Each engine process registers a row of `workers` under an id that is new at every start (never host and
pid: two containers can share both) and renews its lease every heartbeat; the lease lasts
`stale_after_s`. Times are the database's (`now()`), so the clocks of the hosts do not matter. A lease
that ran out is never renewed (the renewal is guarded on it still holding): its engine stops its work
before then (self-fencing), registers again under a new id, and the runs of the old one are recovered
by any live process. Claims and step starts are guarded on a live lease in the same statement, so an
engine that was frozen past its lease cannot start anything when it wakes.

On SQLite (one process owns the file) there is no lease: liveness is the run's heartbeat, as before.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from engine.db import current
from engine.store import Stmt, fetch, run_batch
from models.status import RunStatus

SHARED_KIND = "postgresql"

# Only to simulate, in tests, processes that look alike (two containers with one host name and pid 1):
# what is recorded as the host and pid of this process. Identity is the worker id alone either way.
IDENTITY_ENV = "STEPDECK_SIMULATE_HOST_PID"


def shared() -> bool:
    """The open database is shared by several engine processes (PostgreSQL): leases apply."""
    return current().kind == SHARED_KIND


def new_worker_id() -> str:
    """A fresh random id for one start of one engine process."""
    return f"w-{secrets.token_hex(8)}"


def identity() -> tuple[str, int]:
    """The host name and pid recorded for this process (for people; never used to judge liveness)."""
    simulated = os.environ.get(IDENTITY_ENV, "")
    if simulated:
        host, _, pid = simulated.rpartition(":")
        return host, int(pid)
    return socket.gethostname(), os.getpid()


@functools.cache
def product_version() -> str:
    """Stepdeck's version, as the project file says (recorded with each worker)."""
    try:
        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def live_lease_sql(owner_column: str) -> str:
    """A guard clause: the engine named by `owner_column` holds a live lease (empty where there are none)."""
    if not shared():
        return ""
    return f" AND EXISTS (SELECT 1 FROM workers w WHERE w.id = {owner_column} AND w.lease_until > now())"


async def register(worker_id: str, ttl_s: float) -> None:
    """Record this process under `worker_id` with a lease of `ttl_s` from now (database clock)."""
    host, pid = identity()
    await run_batch(
        [
            Stmt(
                "INSERT INTO workers (id, host, pid, started_at, version, lease_until)"
                " VALUES (?, ?, ?, now(), ?, now() + make_interval(secs => ?))",
                (worker_id, host[:255], pid, product_version()[:40], ttl_s),
                guard=True,
            )
        ]
    )


async def renew(worker_id: str, ttl_s: float) -> bool:
    """Extend the lease to `ttl_s` from now; False when it had already run out (it is never renewed then)."""
    result = await run_batch(
        [
            Stmt(
                "UPDATE workers SET lease_until = now() + make_interval(secs => ?)"
                " WHERE id = ? AND lease_until > now()",
                (ttl_s, worker_id),
            )
        ]
    )
    return result.rowcounts[0] == 1


async def retire(worker_id: str) -> None:
    """End the lease now (the engine stopped); forget the worker unless a run is still marked as its own."""
    await run_batch(
        [
            Stmt("UPDATE workers SET lease_until = now() WHERE id = ?", (worker_id,)),
            Stmt(
                "DELETE FROM workers WHERE id = ? AND NOT EXISTS (SELECT 1 FROM runs WHERE owner = ? AND status = ?)",
                (worker_id, worker_id, RunStatus.RUNNING),
            ),
        ]
    )


async def forget_expired(older_than_s: float) -> int:
    """Delete workers whose lease ended more than `older_than_s` ago and that own no running run."""
    result = await run_batch(
        [
            Stmt(
                "DELETE FROM workers WHERE lease_until < now() - make_interval(secs => ?)"
                " AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.owner = workers.id AND runs.status = ?)",
                (older_than_s, RunStatus.RUNNING),
            )
        ]
    )
    return result.rowcounts[0]


async def live_workers() -> list[dict[str, object]]:
    """Workers with a live lease, oldest first."""
    return await fetch(
        "SELECT id, host, pid, started_at, version, lease_until FROM workers WHERE lease_until > now()"
        " ORDER BY started_at"
    )


@dataclass
class LocalDeadline:
    """When this process must consider a lease gone, by its own monotonic clock: the lease's length after
    the renewal that last succeeded was *sent* (the database's `now()` is no earlier), less a margin that
    covers the time between two checks."""

    ttl_s: float
    margin_s: float
    until: float = 0.0

    def renewed(self, sent_at: float) -> None:
        self.until = sent_at + self.ttl_s - self.margin_s

    def holds(self) -> bool:
        return time.monotonic() < self.until

    def lapse(self) -> None:
        self.until = 0.0


def fencing_margin_s(ttl_s: float, interval_s: float) -> float:
    """How long before the end of a lease its holder stops acting on it: three renewal intervals (one
    late renewal, one bounded wait for the database, one check), at most half the lease."""
    return min(3 * interval_s, ttl_s / 2)
