"""A worker claims at most as many queued runs as it has room for, however many are queued, and two
workers claiming at once never take the same run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from engine import leases, operations, transitions
from engine.registry import Registry
from engine.store import fetch

QUEUED = 60


async def _queue(define: Callable[..., Any], registry: Registry) -> None:
    define("q", [{"key": "a", "call": "tests.stepfns:noop"}])
    for _ in range(QUEUED):
        await operations.start_run(registry.get("q"), {}, "t")


async def test_a_claim_takes_no_more_runs_than_its_limit(
    db: str, define: Callable[..., Any], registry: Registry
) -> None:
    await _queue(define, registry)
    owner = leases.new_worker_id()
    await leases.register(owner, 120)
    first = await transitions.claim_queued_runs(owner, 5)
    assert len(first) == 5  # it was every queued run: the limit applied once per queued row
    again = await transitions.claim_queued_runs(owner, 3, skip=first)
    assert len(again) == 3 and not set(again) & set(first)
    rows = await fetch("SELECT status, count(*) AS n FROM runs GROUP BY status")
    assert {r["status"]: r["n"] for r in rows} == {"running": 8, "queued": QUEUED - 8}
    assert first == sorted(first) and max(first) < min(again)  # the oldest first


async def test_workers_claiming_at_once_share_the_queue_without_taking_a_run_twice(
    db: str, define: Callable[..., Any], registry: Registry
) -> None:
    await _queue(define, registry)
    owners = [leases.new_worker_id() for _ in range(4)]
    for owner in owners:
        await leases.register(owner, 120)
    taken = await asyncio.gather(*(transitions.claim_queued_runs(owner, 10) for owner in owners))
    assert all(len(ids) == 10 for ids in taken), [len(ids) for ids in taken]
    every = [run_id for ids in taken for run_id in ids]
    assert len(set(every)) == 40
    rows = await fetch("SELECT owner, count(*) AS n FROM runs WHERE status = 'running' GROUP BY owner")
    assert sorted(r["n"] for r in rows) == [10, 10, 10, 10]
