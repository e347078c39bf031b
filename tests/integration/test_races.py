"""Cancels racing step starts, on whichever database the suite runs on: no interleaving the database
allows may leave a running step or attempt in a run that ended (on PostgreSQL, under READ COMMITTED,
only the lock every transition takes on its run's row first prevents it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from engine import operations
from engine.db import current
from engine.engine import Engine
from engine.errors import Conflict
from engine.hub import Change, ChangeKind
from engine.registry import Registry
from engine.store import fetch
from tests.conftest import wait_run

RUNS = 250


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("audit_clean")
async def test_250_runs_cancelled_while_their_steps_start_end_in_true_states(
    engine: Engine, define: Callable[..., Any], registry: Registry
) -> None:
    # A fan-out and a join: each completion starts several steps, each in its own guarded batch.
    fan = [f"b{i}" for i in range(4)]
    define(
        "race",
        [
            {"key": "a", "call": "tests.stepfns:anoop"},
            *({"key": k, "call": "tests.stepfns:anoop", "needs": ["a"]} for k in fan),
            {"key": "c", "call": "tests.stepfns:anoop", "needs": fan},
        ],
    )
    cancels: list[asyncio.Task[None]] = []
    delays_s = (0.0, 0.0005, 0.001, 0.002, 0.004)  # around the start of the run's first step(s)

    async def cancel(run_id: int, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        with contextlib.suppress(Conflict):  # it may have completed already
            await operations.cancel_run(run_id, "tester")

    def on_change(change: Change) -> None:
        # Every claim of a run is answered by a cancel a moment later: it races the engine's first starts.
        if change.kind == ChangeKind.RUN and change.to_status == "running" and change.run_id % 6:
            delay_s = delays_s[len(cancels) % len(delays_s)]
            cancels.append(asyncio.get_running_loop().create_task(cancel(change.run_id, delay_s)))

    remove = current().hub.add_listener(on_change)
    try:
        runs = [await operations.start_run(registry.get("race"), {}, "tester") for _ in range(RUNS)]
        for run_id in runs:
            await wait_run(run_id, "cancelled", "completed", "failed", timeout_s=120)
        await asyncio.gather(*cancels)
    finally:
        remove()
    ended = [await wait_run(run_id, "cancelled", "completed", "failed", timeout_s=120) for run_id in runs]
    await engine.wait_idle()
    assert set(ended) <= {"cancelled", "completed"}
    assert all(status == "completed" for run_id, status in zip(runs, ended, strict=True) if run_id % 6 == 0)
    live_in_ended = await fetch(
        "SELECT r.id, r.status AS run_status, s.key, s.status FROM steps s JOIN runs r ON r.id = s.run_id"
        " WHERE r.status IN ('cancelled', 'completed') AND s.status = 'running'"
    )
    assert live_in_ended == []
    attempts = await fetch(
        "SELECT a.id FROM attempts a JOIN runs r ON r.id = a.run_id"
        " WHERE r.status IN ('cancelled', 'completed') AND a.status = 'running'"
    )
    assert attempts == []
