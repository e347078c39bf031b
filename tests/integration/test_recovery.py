"""Recovery of interrupted runs: the `resume` policy (re-queue, at most a few times) and the
shutdown grace period. Process-level scenarios (kill -9, SIGSTOP) are in test_crash.py."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from engine import leases, operations, orphans, queries, records, transitions
from engine.definitions import WorkflowDef
from engine.orphans import MAX_RECOVERIES, orphan_action
from engine.settings import Settings
from engine.store import Stmt, fetch, run_batch
from tests import stepfns
from tests.conftest import attempts_of, engine_running, holding_lease, run_status, step_of, wait_for, wait_run

Define = Callable[..., WorkflowDef]
SILENT_OWNER = "otherhost:4242:silent"  # another host: judged by its heartbeat alone, maybe still alive


def _dead_owner() -> str:
    """An owner on this host whose process has ended: provably gone."""
    process = subprocess.Popen(["true"])
    process.wait()
    return f"{socket.gethostname()}:{process.pid}:old"


pytestmark = pytest.mark.usefixtures("audit_clean")


@pytest.mark.parametrize(
    ("policy", "recoveries", "gone", "action"),
    [
        ("fail", 0, True, "fail"),
        ("resume", 0, True, "requeue"),
        ("resume", MAX_RECOVERIES - 1, True, "requeue"),
        ("resume", MAX_RECOVERIES, True, "fail"),
        ("resume", 0, False, "fail"),  # a silent engine may still be running it: never run it twice
    ],
)
def test_orphan_policy(policy: str, recoveries: int, gone: bool, action: str) -> None:
    assert orphan_action(policy, recoveries, gone) == action


async def _orphaned_mid_step(define: Define, owner: str | None = None) -> int:
    """A run whose engine stopped while step 'b' ran (its heartbeat is ancient); by default a dead one."""
    owner = owner or _dead_owner()
    defn = define(
        "orphan",
        [
            {"key": "a", "call": "tests.stepfns:noop"},
            {"key": "b", "call": "tests.stepfns:counted"},
            {"key": "c", "call": "tests.stepfns:noop"},
        ],
    )
    run_id = await operations.start_run(defn, {}, "tester")
    assert await transitions.claim_run(run_id, await holding_lease(owner))
    ids = {r["key"]: r["id"] for r in await _step_ids(run_id)}
    a = await transitions.start_step(transitions.StepStart(run_id, ids["a"], "a", 1, (), {}, owner))
    assert a is not None
    ref = records.AttemptRef(run_id, ids["a"], "a", a, 1)
    assert await transitions.complete_step(ref, ["a done"], 0, [], None, None)
    b = await transitions.start_step(transitions.StepStart(run_id, ids["b"], "b", 1, ("a",), {}, owner))
    assert b is not None
    await _age_heartbeat(run_id)
    if leases.shared():  # where engines hold leases, a stopped engine's lease ends
        await run_batch([Stmt("UPDATE workers SET lease_until = now() - interval '1 hour' WHERE id = ?", (owner,))])
    return run_id


async def _step_ids(run_id: int) -> list[dict[str, Any]]:
    return await fetch("SELECT id, key FROM steps WHERE run_id = ?", (run_id,))


async def _age_heartbeat(run_id: int) -> None:
    await run_batch([Stmt("UPDATE runs SET heartbeat_at = ? WHERE id = ?", ("2000-01-01 00:00:00+00:00", run_id))])


async def test_resume_requeues_an_orphan_and_the_interrupted_step_runs_again(
    settings: Settings, define: Define
) -> None:
    stepfns.reset()
    run_id = await _orphaned_mid_step(define)
    resume = dataclasses.replace(settings, on_orphan="resume")
    async with engine_running(resume):  # startup recovery re-queues it, the engine then runs it
        assert await wait_run(run_id, "completed", "failed") == "completed"
    b = await step_of(run_id, "b")
    assert b["attempt"] == 2
    history = await attempts_of(run_id, "b")
    assert [a["status"] for a in history] == ["failed", "completed"]
    assert "interrupted" in history[0]["error"]
    assert (await step_of(run_id, "a"))["attempt"] == 1  # its output was kept, not recomputed
    assert (await queries.run_detail(run_id)).to_json()["recoveries"] == 1


async def test_resume_gives_up_after_the_limit_with_a_reason(settings: Settings, define: Define) -> None:
    run_id = await _orphaned_mid_step(define)
    await run_batch([Stmt("UPDATE runs SET recoveries = ? WHERE id = ?", (MAX_RECOVERIES, run_id))])
    resume = dataclasses.replace(settings, on_orphan="resume")
    handled = await orphans.recover_orphans(resume, "thishost:1:me")
    assert [(v.run_id, v.action) for v in handled] == [(run_id, "fail")]
    assert await run_status(run_id) == "failed"
    error = (await queries.run_detail(run_id)).to_json()["error"]
    assert error is not None
    assert "not re-queued again" in error
    assert f"at most {MAX_RECOVERIES} times" in error
    assert "'b'" in error


async def test_fail_policy_fails_an_orphan_naming_the_step(settings: Settings, define: Define) -> None:
    run_id = await _orphaned_mid_step(define)
    handled = await orphans.recover_orphans(settings, "thishost:1:me")
    assert [v.action for v in handled] == ["fail"]
    run = (await queries.run_detail(run_id)).to_json()
    assert run["status"] == "failed"
    assert run["error"] is not None
    assert "step 'b' was running" in run["error"]
    assert all(s["status"] != "running" for s in run["steps"])


async def test_shutdown_grace_lets_a_running_step_finish_and_requeues_the_rest(
    settings: Settings, define: Define
) -> None:
    defn = define(
        "graceful",
        [{"key": "a", "call": "tests.stepfns:nap"}, {"key": "b", "call": "tests.stepfns:noop"}],
        inputs={"sleep_s": {"type": "number", "default": 0.4}},
    )
    graceful = dataclasses.replace(settings, shutdown_grace_s=3.0)
    async with engine_running(graceful) as eng:
        run_id = await operations.start_run(defn, {}, "tester")
        await wait_for(lambda: _status_is(run_id, "a", "running"), 5, "a running")
        await eng.stop()
    assert (await step_of(run_id, "a"))["status"] == "completed"  # finished within the grace period
    assert (await step_of(run_id, "b"))["status"] == "pending"  # never started
    assert await run_status(run_id) == "queued"  # continues at the next start
    async with engine_running(settings):
        assert await wait_run(run_id, "completed", "failed") == "completed"


async def test_shutdown_under_resume_requeues_a_step_cut_off_after_the_grace(
    settings: Settings, define: Define
) -> None:
    defn = define(
        "cut", [{"key": "a", "call": "tests.stepfns:sleepy"}], inputs={"sleep_s": {"type": "number", "default": 30}}
    )
    resume = dataclasses.replace(settings, on_orphan="resume", shutdown_grace_s=0.2)
    async with engine_running(resume) as eng:
        run_id = await operations.start_run(defn, {}, "tester")
        await wait_for(lambda: _status_is(run_id, "a", "running"), 5, "a running")
        await eng.stop()
    assert await run_status(run_id) == "queued"
    history = await attempts_of(run_id, "a")
    assert [a["status"] for a in history] == ["failed"]
    assert "interrupted" in history[0]["error"]
    assert (await queries.run_detail(run_id)).to_json()["recoveries"] == 0  # a shutdown is not a crash


async def _status_is(run_id: int, key: str, status: str) -> bool:
    return bool((await step_of(run_id, key))["status"] == status)


@pytest.mark.sqlite_only  # liveness by process and heartbeat; on PostgreSQL by lease (tests/postgres/test_workers.py)
async def test_resume_fails_rather_than_requeues_a_run_whose_engine_may_be_alive(
    settings: Settings, define: Define
) -> None:
    run_id = await _orphaned_mid_step(define, SILENT_OWNER)
    resume = dataclasses.replace(settings, on_orphan="resume")
    handled = await orphans.recover_orphans(resume, "thishost:1:me")
    assert [(v.run_id, v.action) for v in handled] == [(run_id, "fail")]
    assert "may still be running it" in str((await queries.run_detail(run_id)).to_json()["error"])


async def test_draining_starts_no_step_that_was_waiting_for_a_slot(settings: Settings, define: Define) -> None:
    defn = define(
        "one-slot",
        [{"key": k, "call": "tests.stepfns:nap", "needs": []} for k in ("a", "b")],
        inputs={"sleep_s": {"type": "number", "default": 0.5}},
    )
    narrow = dataclasses.replace(settings, max_concurrent_steps=1, shutdown_grace_s=2.0)
    async with engine_running(narrow) as eng:
        run_id = await operations.start_run(defn, {}, "tester")
        await wait_for(lambda: _status_is(run_id, "a", "running"), 5, "a running")
        await eng.stop()  # b waits for a's slot; once a finishes, b must not start
    assert (await step_of(run_id, "a"))["status"] == "completed"
    assert (await step_of(run_id, "b"))["status"] == "pending"
    assert await run_status(run_id) == "queued"
