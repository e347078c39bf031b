"""Automatic retries by a step's policy: new attempts after the delays, the `retrying` state, the count
shown and reset, timeouts through the same policy, cancel and shutdown during a pending retry. Every
scenario ends with a clean audit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine import operations, transitions
from engine.engine import Engine
from engine.registry import Registry
from engine.settings import Settings
from engine.store import Stmt, fetch, run_batch
from tests import stepfns
from tests.conftest import attempts_of, engine_running, events_of, step_of, wait_for, wait_run

Define = Callable[..., Any]
FAILURES = {"failures": {"type": "integer", "default": 2}}

pytestmark = pytest.mark.usefixtures("audit_clean")


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _gap_s(earlier: dict[str, Any], later: dict[str, Any]) -> float:
    return (_at(later["started_at"]) - _at(earlier["finished_at"])).total_seconds()


async def _retrying(run_id: int, key: str) -> dict[str, Any] | None:
    step = await step_of(run_id, key)
    return step if step["status"] == "retrying" else None


async def _due_soon(run_id: int, key: str) -> datetime:
    """Bring a pending retry's due time to half a second from now, and return it. A test that must see the
    retry still pending after stopping its engine plans it far ahead (a short delay could run out first on
    a loaded machine), then makes it due for the next engine."""
    due = datetime.now(UTC) + timedelta(seconds=0.5)
    await run_batch([Stmt("UPDATE steps SET retry_at = ? WHERE run_id = ? AND key = ?", (due, run_id, key))])
    return due


async def test_a_flaky_step_completes_on_its_third_attempt_after_the_delays(
    engine: Engine, define: Define, registry: Registry
) -> None:
    define(
        "flaky",
        [{"key": "a", "call": "tests.stepfns:flaky", "retries": 2, "retry_delay_s": 0.3, "retry_backoff": 2}],
        inputs=FAILURES,
    )
    run_id = await operations.start_run(registry.get("flaky"), {}, "tester")
    await wait_run(run_id, "completed", timeout_s=30)

    attempts = await attempts_of(run_id, "a")
    assert [a["status"] for a in attempts] == ["failed", "failed", "completed"]
    assert [a["error"] for a in attempts[:2]] == [
        "RuntimeError: transient failure 1",
        "RuntimeError: transient failure 2",
    ]
    assert attempts[2]["outputs"] == ["succeeded on call 3"]
    # Lower bounds only: the delays are respected however slow the machine is.
    assert _gap_s(attempts[0], attempts[1]) >= 0.3
    assert _gap_s(attempts[1], attempts[2]) >= 0.6

    by_policy = [e for e in await events_of(run_id, "step") if e["actor"] == "retry policy"]
    assert [(e["from_status"], e["to_status"]) for e in by_policy] == [
        ("running", "retrying"),
        ("retrying", "running"),
        ("running", "retrying"),
        ("retrying", "running"),
    ]
    assert "attempt 2 of 3" in by_policy[0]["message"] and "transient failure 1" in by_policy[0]["message"]
    assert by_policy[3]["message"] == "retry: attempt 3 of 3"
    step = await step_of(run_id, "a")
    assert (step["status"], step["attempt"], step["retries"], step["retries_used"]) == ("completed", 3, 2, 2)
    assert step["retry_at"] is None


async def test_a_step_whose_retries_are_spent_fails_the_run(engine: Engine, define: Define, registry: Registry) -> None:
    define("spent", [{"key": "a", "call": "tests.stepfns:boom", "retries": 1, "retry_delay_s": 0}])
    run_id = await operations.start_run(registry.get("spent"), {}, "tester")
    await wait_run(run_id, "failed")
    assert [a["status"] for a in await attempts_of(run_id, "a")] == ["failed", "failed"]
    step = await step_of(run_id, "a")
    assert (step["status"], step["error"]) == ("failed", "ValueError: the step exploded")


async def test_workflow_defaults_apply_and_retry_on_limits_what_is_retried(
    engine: Engine, define: Define, registry: Registry
) -> None:
    define(
        "only-timeouts",
        [{"key": "a", "call": "tests.stepfns:boom"}, {"key": "b", "call": "tests.stepfns:noop", "needs": []}],
        retries=3,
        retry_delay_s=0,
        retry_on=["timeout"],
    )
    run_id = await operations.start_run(registry.get("only-timeouts"), {}, "tester")
    await wait_run(run_id, "failed")
    assert len(await attempts_of(run_id, "a")) == 1  # an error is not in retry_on
    assert (await step_of(run_id, "a"))["retries"] == 3


async def test_a_timeout_goes_through_the_same_policy(engine: Engine, define: Define, registry: Registry) -> None:
    define(
        "slow",
        [{"key": "a", "call": "tests.stepfns:sleepy", "timeout_s": 0.2, "retries": 1, "retry_delay_s": 0}],
        inputs={"sleep_s": {"type": "number", "default": 30}},
    )
    run_id = await operations.start_run(registry.get("slow"), {}, "tester")
    await wait_run(run_id, "failed", timeout_s=20)
    attempts = await attempts_of(run_id, "a")
    assert [(a["status"], a["error"]) for a in attempts] == [("failed", "timed out after 0.2 s")] * 2


async def test_cancel_during_a_pending_retry_ends_it(engine: Engine, define: Define, registry: Registry) -> None:
    define("later", [{"key": "a", "call": "tests.stepfns:boom", "retries": 2, "retry_delay_s": 600}])
    run_id = await operations.start_run(registry.get("later"), {}, "tester")
    step = await wait_for(lambda: _retrying(run_id, "a"), 10, "the step to wait for its retry")
    assert step["retry_at"] is not None and step["error"] == "ValueError: the step exploded"
    assert (await fetch("SELECT status FROM runs WHERE id = ?", (run_id,)))[0]["status"] == "running"

    assert await operations.cancel_run(run_id, "alice") is True
    await wait_for(lambda: _no_driver(engine, run_id), 5, "the run's driver to end")
    await engine.wait_idle()
    step = await step_of(run_id, "a")
    assert (step["status"], step["retry_at"]) == ("cancelled", None)
    assert len(await attempts_of(run_id, "a")) == 1  # the retry never started
    await wait_run(run_id, "cancelled")


async def _no_driver(engine: Engine, run_id: int) -> bool:
    return run_id not in engine.drivers


async def test_a_persons_rerun_resets_the_count(engine: Engine, define: Define, registry: Registry) -> None:
    define("again", [{"key": "a", "call": "tests.stepfns:boom", "retries": 1, "retry_delay_s": 0}])
    run_id = await operations.start_run(registry.get("again"), {}, "tester")
    await wait_run(run_id, "failed")
    await operations.rerun_from(run_id, "a", "alice")
    await wait_for(lambda: _attempts(run_id, "a", 4), 10, "two more attempts")
    await wait_run(run_id, "failed")
    starts = [e["message"] for e in await events_of(run_id, "step") if e["to_status"] == "running" and e["actor"]]
    assert starts == ["retry: attempt 2 of 2", "retry: attempt 2 of 2"]  # a fresh series after the rerun


async def _attempts(run_id: int, key: str, n: int) -> bool:
    return len(await attempts_of(run_id, key)) >= n


async def test_a_shutdown_keeps_the_pending_retry_and_the_next_engine_fires_it(
    settings: Settings, define: Define, registry: Registry
) -> None:
    define(
        "restart",
        [{"key": "a", "call": "tests.stepfns:flaky", "retries": 1, "retry_delay_s": 600}],
        inputs={"failures": {"type": "integer", "default": 1}},
    )
    async with engine_running(settings):
        run_id = await operations.start_run(registry.get("restart"), {}, "tester")
        pending = await wait_for(lambda: _retrying(run_id, "a"), 10, "the pending retry")
    # The engine stopped: nothing was executing, so the run waits in the queue with its retry due.
    rows = await fetch("SELECT status, owner FROM runs WHERE id = ?", (run_id,))
    assert (rows[0]["status"], rows[0]["owner"]) == ("queued", None)
    assert (await step_of(run_id, "a"))["retry_at"] == pending["retry_at"]

    due = await _due_soon(run_id, "a")  # not in ten minutes: the next engine must fire it, when it is due
    async with engine_running(settings):
        await wait_run(run_id, "completed", timeout_s=20)
    attempts = await attempts_of(run_id, "a")
    assert [a["status"] for a in attempts] == ["failed", "completed"]
    assert _at(attempts[1]["started_at"]) >= due  # not before it was due


async def test_the_sweeps_fail_drops_a_pending_retry(settings: Settings, define: Define, registry: Registry) -> None:
    define(
        "swept",
        [
            {"key": "a", "call": "tests.stepfns:boom", "retries": 1, "retry_delay_s": 600},
            {"key": "b", "call": "tests.stepfns:blocking", "needs": []},
        ],
    )
    async with engine_running(settings):
        run_id = await operations.start_run(registry.get("swept"), {}, "tester")
        await wait_for(lambda: _retrying(run_id, "a"), 10, "the pending retry")
        # As the sweep does when the run's heartbeat is stale, under the `fail` policy.
        assert await transitions.fail_running_run(run_id, "interrupted: stale", actor="sweep")
    step = await step_of(run_id, "a")
    assert (step["status"], step["retry_at"]) == ("failed", None)
    assert len(await attempts_of(run_id, "a")) == 1
    assert (await step_of(run_id, "b"))["status"] == "failed"
    dropped = [e for e in await events_of(run_id, "step") if e["step"] == "a" and e["from_status"] == "retrying"]
    assert [(e["to_status"], e["message"]) for e in dropped] == [
        ("failed", "interrupted: stale; its pending retry was dropped")
    ]


async def test_check_finds_impossible_retry_states(db: str) -> None:
    from engine import audit

    run_id = (
        await transitions.create_run(
            transitions.NewRun("w", {}, {}, [transitions.NewStep("a", "A", "python", [], 1)], "t")
        )
    ).id
    # Planted: a retrying step without a due time, in a run that is neither running nor queued, and
    # without a failed attempt.
    await run_batch(
        [
            Stmt("UPDATE runs SET status = 'completed', finished_at = updated_at WHERE id = ?", (run_id,)),
            Stmt("UPDATE steps SET status = 'retrying' WHERE run_id = ?", (run_id,)),
        ]
    )
    findings, _ = await audit.audit()
    problems = {f.problem for f in findings if f.run_id == run_id}
    assert {
        "retrying step without a due time, or with one while not retrying",
        "retrying step in a run that is neither running nor queued",
        "retrying step whose current attempt did not fail",
    } <= problems
    await run_batch([Stmt("DELETE FROM runs WHERE id = ?", (run_id,))])  # the fixture's audit must be clean


async def test_the_sweep_requeues_a_silent_engines_run_that_only_waits_for_a_retry(
    settings: Settings, define: Define, registry: Registry
) -> None:
    from engine import orphans

    define("silent", [{"key": "a", "call": "tests.stepfns:flaky", "retries": 1, "retry_delay_s": 600}], inputs=FAILURES)
    stepfns.reset()
    async with engine_running(settings):
        run_id = await operations.start_run(registry.get("silent"), {"failures": 1}, "tester")
        await wait_for(lambda: _retrying(run_id, "a"), 10, "the pending retry")
    await _due_soon(run_id, "a")
    # Make it look like the run of an engine on another host that stopped answering (not provably gone).
    await run_batch(
        [
            Stmt(
                "UPDATE runs SET status = 'running', owner = 'elsewhere:1:x', heartbeat_at = ? WHERE id = ?",
                (datetime(2020, 1, 1, tzinfo=UTC), run_id),
            )
        ]
    )
    (verdict,) = await orphans.recover_orphans(settings, "here:2:y")
    assert (verdict.action, verdict.retry_pending) == ("requeue", True)  # even under the `fail` policy
    assert "re-queued with its pending retry" in verdict.reason
    async with engine_running(settings):
        await wait_run(run_id, "completed", timeout_s=20)
    assert [a["status"] for a in await attempts_of(run_id, "a")] == ["failed", "completed"]


async def test_a_failure_while_the_engine_drains_keeps_its_retry_for_the_next_engine(
    settings: Settings, define: Define, registry: Registry
) -> None:
    import asyncio
    import dataclasses

    define("drain", [{"key": "a", "call": "tests.stepfns:fail_when_released", "retries": 1, "retry_delay_s": 0}])
    stepfns.reset()
    async with engine_running(dataclasses.replace(settings, shutdown_grace_s=30)) as engine:
        run_id = await operations.start_run(registry.get("drain"), {}, "tester")
        await wait_for(lambda: _calls("fail_when_released"), 10, "the step to start")
        stopping = asyncio.ensure_future(engine.stop())
        await wait_for(lambda: _draining(engine, run_id), 10, "the engine to drain")
        stepfns.RELEASE.set()
        await stopping
    rows = await fetch("SELECT status FROM runs WHERE id = ?", (run_id,))
    assert rows[0]["status"] == "queued"
    assert (await step_of(run_id, "a"))["status"] == "retrying"
    stepfns.reset()  # the next attempt blocks again: cancel it from there
    async with engine_running(settings) as engine:
        await wait_for(lambda: _calls("fail_when_released"), 10, "the retry to start")
        assert await operations.cancel_run(run_id, "alice")
    assert [a["status"] for a in await attempts_of(run_id, "a")] == ["failed", "cancelled"]


async def _calls(name: str) -> bool:
    return stepfns.CALLS[name] >= 1


async def _draining(engine: Engine, run_id: int) -> bool:
    driver = engine.drivers.get(run_id)
    return driver is not None and driver.draining


async def test_cancelling_a_queued_run_drops_the_retry_it_waits_with(
    settings: Settings, define: Define, registry: Registry
) -> None:
    define("queued-retry", [{"key": "a", "call": "tests.stepfns:boom", "retries": 1, "retry_delay_s": 600}])
    async with engine_running(settings):
        run_id = await operations.start_run(registry.get("queued-retry"), {}, "tester")
        await wait_for(lambda: _retrying(run_id, "a"), 10, "the pending retry")
    assert (await fetch("SELECT status FROM runs WHERE id = ?", (run_id,)))[0]["status"] == "queued"
    assert await operations.cancel_run(run_id, "alice")
    step = await step_of(run_id, "a")
    assert (step["status"], step["retry_at"]) == ("cancelled", None)
    events = [e for e in await events_of(run_id, "step") if e["from_status"] == "retrying"]
    assert [(e["to_status"], e["message"]) for e in events] == [
        ("cancelled", "cancelled by alice; its pending retry was dropped")
    ]
