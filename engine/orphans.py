"""Orphan recovery and the sweep: no run stays RUNNING after the process behind it has died.

A run is an orphan when its owner is provably dead (same host, process gone) or has not
heartbeated for `stale_after_s`; where engines hold leases (PostgreSQL), when its engine holds no
live lease (`engine/leases.py`). A healthy owner heartbeats every few seconds whatever its steps
do (sync steps run in threads), so a long step never looks dead. Both paths write through the
guarded RUNNING → FAILED transition: running them twice, or from two processes, fails a run once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from engine import leases, logs, records, transitions
from engine.settings import Settings
from engine.store import Stmt, fetch, run_batch
from models.status import RunStatus, StepStatus

log = logs.logger(__name__)


MAX_RECOVERIES = 3  # under `resume`, how often one run is re-queued before it is failed for good
FORGET_WORKERS_AFTER_S = 3600.0  # workers whose lease ended this long ago (owning no run) are deleted


@dataclass(frozen=True, slots=True)
class OrphanVerdict:
    run_id: int
    reason: str
    heartbeat_at: Any = None  # as read: the run is failed only if it has not beaten since
    recoveries: int = 0
    action: str = "fail"  # what recover_orphans did: fail | requeue
    owner_gone: bool = False  # its engine provably ended (not merely silent)
    retry_pending: bool = False  # nothing was executing, a step waits for its retry's due time
    owner: str | None = None  # by lease: the engine whose lease ended (the transition is guarded on it)


def orphan_action(policy: str, recoveries: int, owner_gone: bool = True, limit: int = MAX_RECOVERIES) -> str:
    """`requeue` under the `resume` policy until a run was re-queued `limit` times, else `fail`.

    Only a run whose engine provably ended is re-queued: one that merely stopped answering (frozen,
    overloaded, cut off) may still be executing it, and running it again would do the work twice.
    """
    return "requeue" if policy == "resume" and owner_gone and recoveries < limit else "fail"


def owner_is_dead(owner: str | None, host: str | None = None) -> bool:
    """True only when the owner ran on this host and its process no longer exists."""
    if not owner:
        return True
    parts = owner.split(":")
    if len(parts) < 2 or parts[0] != (host or socket.gethostname()):
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # this process; a different boot of it means the previous one is gone (handled by caller)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def owner_gone(owner: str | None, me: str) -> bool:
    """The owner's process has ended: dead on this host, or this very process started anew."""
    same_process_restarted = owner is not None and me.rsplit(":", 1)[0] == owner.rsplit(":", 1)[0] and owner != me
    return owner_is_dead(owner) or same_process_restarted


HEADLESS_BOOT = "run-"  # starts the boot part of the owner id of a headless `main.py run`


def _is_headless(owner: str | None) -> bool:
    return owner is not None and owner.rsplit(":", 1)[-1].startswith(HEADLESS_BOOT)


def orphan_reason(
    row: dict[str, Any], running_steps: list[str], me: str, now: datetime, stale_after_s: float
) -> str | None:
    """Why this RUNNING run is an orphan, or None when its owner may still be alive (pure but for pid checks)."""
    owner, beat = row["owner"], _as_datetime(row["heartbeat_at"])
    stale = beat is None or now - beat > timedelta(seconds=stale_after_s)
    if owner == me:
        # This process beats every run it drives; its own stale run has lost its driver.
        return f"interrupted: its driver in this engine stopped (last heartbeat {beat}); see the log" if stale else None
    steps = ", ".join(repr(k) for k in running_steps)
    where = f" while step {steps} was running" if steps else ""
    when = f"last heartbeat {beat:%Y-%m-%d %H:%M:%S} UTC" if beat else "no heartbeat"
    if owner_gone(owner, me):
        process = "the headless `main.py run` process" if _is_headless(owner) else "the server"
        return f"interrupted: {process} stopped{where}; {when} from {owner or 'an unknown owner'}"
    if stale:
        return (
            f"interrupted: its engine stopped responding{where}; {when} from {owner}, more than {stale_after_s:g} s ago"
        )
    return None


async def find_orphans(settings: Settings, me: str) -> list[OrphanVerdict]:
    """RUNNING runs whose engine is gone or silent (by lease where engines hold leases, else by heartbeat
    and process)."""
    if leases.shared():
        # Besides, this engine's own runs that lost their driver: its lease holds, but they stopped beating.
        mine = await fetch(
            "SELECT id, owner, heartbeat_at, recoveries, now() AS db_now FROM runs WHERE status = ? AND owner = ?",
            (RunStatus.RUNNING, me),
        )
        driverless = await _judge(mine, settings, me, mine[0]["db_now"]) if mine else []
        return [*await _find_unleased(), *driverless]
    rows = await fetch("SELECT id, owner, heartbeat_at, recoveries FROM runs WHERE status = ?", (RunStatus.RUNNING,))
    return await _judge(rows, settings, me, records.utcnow())


async def _active_steps(run_id: int) -> tuple[list[str], bool]:
    """The keys of a run's running steps, in declared order, and whether a step of it waits for a retry."""
    steps = await fetch(
        "SELECT key, status FROM steps WHERE run_id = ? AND status IN (?, ?) ORDER BY position",
        (run_id, StepStatus.RUNNING, StepStatus.RETRYING),
    )
    running = [s["key"] for s in steps if s["status"] == StepStatus.RUNNING]
    return running, any(s["status"] == StepStatus.RETRYING for s in steps)


async def _judge(rows: list[dict[str, Any]], settings: Settings, me: str, now: datetime) -> list[OrphanVerdict]:
    """Verdicts on RUNNING runs by their owner's process and heartbeat, at `now` (the clock that wrote the beats)."""
    verdicts = []
    for row in rows:
        running, retrying = await _active_steps(row["id"])
        reason = orphan_reason(row, running, me, now, settings.stale_after_s)
        if reason:
            gone = owner_gone(row["owner"], me)
            pending = not running and retrying
            verdicts.append(
                OrphanVerdict(
                    row["id"], reason, row["heartbeat_at"], row["recoveries"], owner_gone=gone, retry_pending=pending
                )
            )
    return verdicts


async def _find_unleased() -> list[OrphanVerdict]:
    """RUNNING runs whose engine holds no live lease (database clock). Such an engine stopped its work
    before its lease ended (or was frozen and is refused every write when it wakes): it is gone for
    these runs, whatever its host or pid, and no live engine can hold them."""
    rows = await fetch(
        "SELECT r.id, r.owner, r.heartbeat_at, r.recoveries, w.host, w.pid, w.lease_until FROM runs r"
        " LEFT JOIN workers w ON w.id = r.owner WHERE r.status = ? AND (w.id IS NULL OR w.lease_until <= now())",
        (RunStatus.RUNNING,),
    )
    verdicts = []
    for row in rows:
        running, retrying = await _active_steps(row["id"])
        where = f" while step {', '.join(repr(k) for k in running)} was running" if running else ""
        if row["lease_until"] is None:
            engine = f"its engine {row['owner'] or '(unknown)'} holds no lease"
        else:
            ended = _as_datetime(row["lease_until"])
            engine = (
                f"the lease of its engine {row['owner']} ({row['host']}, pid {row['pid']}) ended"
                f" {ended:%Y-%m-%d %H:%M:%S} UTC"
            )
        pending = not running and retrying
        verdicts.append(
            OrphanVerdict(
                row["id"],
                f"interrupted: {engine}{where}",
                ...,
                row["recoveries"],
                owner_gone=True,
                retry_pending=pending,
                owner=row["owner"],
            )
        )
    return verdicts


async def recover_orphans(settings: Settings, me: str) -> list[OrphanVerdict]:
    """Fail (or, under `resume`, re-queue) every orphaned run; returns those this call handled.

    A run whose engine died while nothing executed and a step waited for its retry is re-queued under
    any policy: no work is repeated, and its retry fires at its due time on the next engine (the guard
    on the owner stops the old one, should it still be alive).
    """
    handled = []
    for verdict in await find_orphans(settings, me):
        action = orphan_action(settings.on_orphan, verdict.recoveries, verdict.owner_gone)
        reason = verdict.reason
        if verdict.retry_pending:
            action, reason = "requeue", f"{reason}; re-queued with its pending retry"
            done = await transitions.requeue_interrupted(
                verdict.run_id, reason, owner=verdict.owner, heartbeat_at=verdict.heartbeat_at, count=False
            )
        elif action == "requeue":
            reason += f"; re-queued (recovery {verdict.recoveries + 1} of {MAX_RECOVERIES})"
            done = await transitions.requeue_interrupted(
                verdict.run_id, reason, owner=verdict.owner, heartbeat_at=verdict.heartbeat_at
            )
        else:
            if settings.on_orphan == "resume" and not verdict.owner_gone:
                reason += "; not re-queued: its engine may still be running it"
            elif settings.on_orphan == "resume":
                reason += (
                    f"; not re-queued again: interrupted {verdict.recoveries + 1} times "
                    f"(STEPDECK_ON_ORPHAN=resume re-queues a run at most {MAX_RECOVERIES} times)"
                )
            done = await transitions.fail_running_run(
                verdict.run_id, reason, owner=verdict.owner, actor="recovery", heartbeat_at=verdict.heartbeat_at
            )
        if done:
            log.warning("run %s: %s", verdict.run_id, reason)
            handled.append(dataclasses.replace(verdict, reason=reason, action=action))
    if leases.shared():
        await leases.forget_expired(FORGET_WORKERS_AFTER_S)
    return handled


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


PRUNE_BATCH = 200  # runs deleted per statement: short transactions, page reads keep flowing


async def prune_finished(retention_days: float, *, batch: int = PRUNE_BATCH) -> int:
    """Delete finished runs (with their steps, attempts and events) older than `retention_days`;
    returns how many. Never touches an active or waiting run. No-op when retention_days is 0."""
    if retention_days <= 0:
        return 0
    cutoff = records.utcnow() - timedelta(days=retention_days)
    terminal = [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED]
    deleted = 0
    while True:
        result = await run_batch(
            [
                # The status again outside the sub-select: on PostgreSQL a run re-queued (a rerun) while
                # this statement runs is re-checked against its new row there, and kept.
                Stmt(
                    "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE status IN (?, ?, ?)"
                    " AND finished_at IS NOT NULL AND finished_at < ? ORDER BY id LIMIT ?) AND status IN (?, ?, ?)",
                    (*terminal, cutoff, batch, *terminal),
                )
            ]
        )
        deleted += result.rowcounts[0]
        if result.rowcounts[0] < batch:
            return deleted
        await asyncio.sleep(0)  # let other work in between batches
