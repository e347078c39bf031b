"""The engine executing steps: cancel, timeouts, errors, output validation, parallel branches,
shutdown mid-step, heartbeats. Every scenario ends with a clean audit."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from engine import operations, queries
from engine.definitions import WorkflowDef
from engine.engine import Engine
from engine.registry import Registry
from engine.settings import Settings
from engine.store import fetch
from tests import stepfns
from tests.conftest import (
    attempts_of,
    commits_of_events,
    engine_running,
    run_status,
    run_to_end,
    step_of,
    wait_for,
    wait_run,
)

Define = Callable[..., WorkflowDef]
SLEEP_INPUT = {"sleep_s": {"type": "number", "default": 30}}
# "At once", on a loaded machine: a hundred times what these take on an idle one, and far below what the wrong
# behaviour takes (the 30 s sleep of the step; a step that ignored its cancellation is abandoned only after
# NO_GRACE_S).
PROMPT_S = 5.0
NO_GRACE_S = 60.0


pytestmark = pytest.mark.usefixtures("audit_clean")


async def calls(name: str, n: int = 1) -> bool:
    return stepfns.CALLS[name] >= n


async def no_driver(engine: Engine, run_id: int) -> bool:
    return run_id not in engine.drivers


async def running_rows() -> list[dict[str, Any]]:
    return [
        *await fetch("SELECT run_id, key FROM steps WHERE status = 'running'"),
        *await fetch("SELECT run_id, number FROM attempts WHERE status = 'running'"),
    ]


# --- cancel ----------------------------------------------------------------------------------------


async def test_cancel_stops_an_async_step_at_once_and_keeps_its_logs(settings: Settings, define: Define) -> None:
    stepfns.reset()
    defn = define(
        "c-async",
        [{"key": "slow", "call": "tests.stepfns:sleepy"}, {"key": "after", "call": "tests.stepfns:noop"}],
        inputs=SLEEP_INPUT,
    )
    async with engine_running(settings.with_overrides(cancel_grace_s=NO_GRACE_S)) as engine:
        run_id = await operations.start_run(defn, {}, "tester")
        await wait_for(lambda: calls("sleepy"), 5, "sleepy to start")
        started = time.monotonic()
        assert await operations.cancel_run(run_id, "alice") is True
        await wait_for(lambda: no_driver(engine, run_id), PROMPT_S, "the driver to stop")
        assert time.monotonic() - started < PROMPT_S
    run = (await queries.run_detail(run_id)).to_json()
    assert (run["status"], run["error"]) == ("cancelled", "cancelled by alice")
    assert [s["status"] for s in run["steps"]] == ["cancelled", "pending"]
    [attempt] = await attempts_of(run_id, "slow")
    assert (attempt["status"], attempt["error"], attempt["outputs"]) == ("cancelled", "cancelled by alice", None)
    assert attempt["logs"] == ["going to sleep"]  # what it logged before the cancel is kept
    assert attempt["finished_at"] is not None
    kinds = [e["kind"] for e in await queries.events_after(run_id)]
    assert "late_result" not in kinds
    assert stepfns.CALLS["noop"] == 0


async def test_cancel_tells_a_sync_step_through_its_context(engine: Engine, define: Define) -> None:
    defn = define("c-sync", [{"key": "block", "call": "tests.stepfns:blocking_watch"}])
    run_id = await operations.start_run(defn, {}, "tester")
    await wait_for(lambda: calls("blocking_watch"), 5, "the sync step to start")
    assert await operations.cancel_run(run_id, "alice") is True
    await wait_for(lambda: calls("blocking_saw_cancel"), PROMPT_S, "the sync step to see ctx.is_cancelled")
    await wait_for(lambda: no_driver(engine, run_id), PROMPT_S, "the driver to stop")
    assert await run_status(run_id) == "cancelled"
    [attempt] = await attempts_of(run_id, "block")
    assert (attempt["status"], attempt["outputs"]) == ("cancelled", None)  # its return value is not stored
    assert (await step_of(run_id, "block"))["status"] == "cancelled"


async def test_a_cancelled_run_frees_its_slot_for_the_next_queued_run(settings: Settings, define: Define) -> None:
    stepfns.reset()
    hog_def = define("slot-hog", [{"key": "slow", "call": "tests.stepfns:sleepy"}], inputs=SLEEP_INPUT)
    next_def = define("slot-next", [{"key": "a", "call": "tests.stepfns:noop"}])
    async with engine_running(settings.with_overrides(max_concurrent_runs=1)) as eng:
        hog = await operations.start_run(hog_def, {}, "tester")
        await wait_for(lambda: calls("sleepy"), 5, "the first run to start")
        nxt = await operations.start_run(next_def, {}, "tester")
        await asyncio.sleep(0.3)
        assert await run_status(nxt) == "queued"  # one run at a time
        assert list(eng.drivers) == [hog]
        assert await operations.cancel_run(hog, "alice")
        assert await wait_run(nxt, "completed", "failed", timeout_s=PROMPT_S) == "completed"
        await wait_for(lambda: _drivers_empty(eng), PROMPT_S, "no driver left")
    assert await run_status(hog) == "cancelled"


async def _drivers_empty(eng: Engine) -> bool:
    return not eng.drivers


# --- timeouts --------------------------------------------------------------------------------------


async def test_a_step_that_exceeds_its_timeout_fails_with_a_timeout_error(settings: Settings, define: Define) -> None:
    stepfns.reset()
    defn = define("t-async", [{"key": "slow", "call": "tests.stepfns:sleepy", "timeout_s": 0.3}], inputs=SLEEP_INPUT)
    async with engine_running(settings.with_overrides(cancel_grace_s=NO_GRACE_S)):
        started = time.monotonic()
        run_id = await run_to_end(defn, "failed", timeout_s=PROMPT_S)
        assert time.monotonic() - started < PROMPT_S
    run = (await queries.run_detail(run_id)).to_json()
    assert run["error"] == "step 'slow' failed: timed out after 0.3 s"
    slow = run["steps"][0]
    assert (slow["status"], slow["error"]) == ("failed", "timed out after 0.3 s")
    [attempt] = await attempts_of(run_id, "slow")
    assert (attempt["status"], attempt["error"], attempt["logs"]) == (
        "failed",
        "timed out after 0.3 s",
        ["going to sleep"],
    )


async def test_a_sync_step_that_exceeds_its_timeout_is_told_to_stop(engine: Engine, define: Define) -> None:
    defn = define("t-sync", [{"key": "block", "call": "tests.stepfns:blocking_watch", "timeout_s": 0.3}])
    run_id = await run_to_end(defn, "failed", timeout_s=5)
    assert (await step_of(run_id, "block"))["error"] == "timed out after 0.3 s"
    await wait_for(lambda: calls("blocking_saw_cancel"), PROMPT_S, "the sync step to see ctx.is_cancelled")


# --- chains of sync steps (a successor runs on in the thread that committed its start) ---------------


async def test_a_chain_of_sync_steps_sees_each_predecessors_output(engine: Engine, define: Define) -> None:
    steps: list[dict[str, Any]] = [{"key": "s0", "call": "tests.stepfns:noop"}]
    steps += [{"key": f"s{i}", "call": "tests.stepfns:collect", "needs": [f"s{i - 1}"]} for i in range(1, 5)]
    steps.append({"key": "join", "call": "tests.stepfns:collect", "needs": ["s2", "s4"]})
    defn = define("chain-out", steps)
    run_id = await run_to_end(defn, "completed")
    outputs = {s["key"]: s["output"] for s in (await queries.run_detail(run_id)).to_json()["steps"]}
    assert outputs["s1"] == {"s0": outputs["s0"]}
    for i in range(2, 5):
        assert outputs[f"s{i}"] == {f"s{i - 1}": outputs[f"s{i - 1}"]}
    assert outputs["join"] == {"s2": outputs["s2"], "s4": outputs["s4"]}


async def test_a_branch_that_found_no_free_slot_runs_once_the_chain_beside_it_goes_on(
    settings: Settings, define: Define, registry: Registry
) -> None:
    # Two step slots: `root` holds one when it completes, so its commit starts `left` (chained, run on by the
    # same thread and task) and finds none for `right`. `right` must get its turn as the chain goes on, as
    # it would if the task of `root` had ended; every slot comes back.
    steps: list[dict[str, Any]] = [{"key": "root", "call": "tests.stepfns:noop"}]
    for side in ("left", "right"):
        steps.append({"key": side, "call": "tests.stepfns:collect", "needs": ["root"]})
        steps += [
            {"key": f"{side}{i}", "call": "tests.stepfns:collect", "needs": [f"{side}{i - 1}" if i else side]}
            for i in range(3)
        ]
    defn = define("chain-fan", steps)
    two_slots = dataclasses.replace(settings, max_concurrent_steps=2)
    stepfns.reset()
    async with engine_running(two_slots, registry) as eng:
        run_id = await run_to_end(defn, "completed")
        detail = (await queries.run_detail(run_id)).to_json()
        assert {s["key"]: s["status"] for s in detail["steps"]} == {s["key"]: "completed" for s in steps}
        assert detail["steps"][-1]["output"] == {"right1": {"right0": {"right": {"root": "ok"}}}}
        await eng.wait_idle()
        assert eng.step_slots.free == 2


async def test_a_chained_sync_step_past_its_timeout_fails_and_is_told_to_stop(engine: Engine, define: Define) -> None:
    defn = define(
        "chain-timeout",
        [
            {"key": "first", "call": "tests.stepfns:noop"},
            {"key": "block", "call": "tests.stepfns:blocking_watch", "needs": ["first"], "timeout_s": 0.3},
            {"key": "after", "call": "tests.stepfns:noop", "needs": ["block"]},
        ],
    )
    run_id = await run_to_end(defn, "failed", timeout_s=PROMPT_S)
    assert (await step_of(run_id, "block"))["error"] == "timed out after 0.3 s"
    assert (await step_of(run_id, "after"))["status"] != "completed"
    await wait_for(lambda: calls("blocking_saw_cancel"), PROMPT_S, "the chained step to see ctx.is_cancelled")
    await wait_for(lambda: no_driver(engine, run_id), PROMPT_S, "the driver to stop")
    assert await running_rows() == []


async def test_cancel_reaches_a_chained_sync_step(engine: Engine, define: Define) -> None:
    defn = define(
        "chain-cancel",
        [
            {"key": "first", "call": "tests.stepfns:noop"},
            {"key": "block", "call": "tests.stepfns:blocking_watch", "needs": ["first"]},
            {"key": "after", "call": "tests.stepfns:noop", "needs": ["block"]},
        ],
    )
    run_id = await operations.start_run(defn, {}, "tester")
    await wait_for(lambda: calls("blocking_watch"), 5, "the chained step to start")
    assert await operations.cancel_run(run_id, "alice") is True
    await wait_for(lambda: calls("blocking_saw_cancel"), PROMPT_S, "the chained step to see ctx.is_cancelled")
    await wait_for(lambda: no_driver(engine, run_id), PROMPT_S, "the driver to stop")
    steps = {s["key"]: s["status"] for s in (await queries.run_detail(run_id)).to_json()["steps"]}
    assert await run_status(run_id) == "cancelled"
    assert (steps["first"], steps["block"]) == ("completed", "cancelled")
    assert steps["after"] in ("pending", "cancelled"), steps  # never started after the cancel
    assert stepfns.CALLS["noop"] == 1
    assert await running_rows() == []


async def test_a_timeout_error_raised_by_the_step_itself_is_not_our_timeout(engine: Engine, define: Define) -> None:
    defn = define("t-own", [{"key": "api", "call": "tests.stepfns:own_timeout", "timeout_s": 30}])
    run_id = await run_to_end(defn, "failed")
    step = await step_of(run_id, "api")
    assert step["error"] == "TimeoutError: the upstream API timed out"
    assert "timed out after" not in step["error"]
    assert (await queries.run_detail(run_id)).to_json()[
        "error"
    ] == "step 'api' failed: TimeoutError: the upstream API timed out"
    assert stepfns.CALLS["own_timeout"] == 1


async def test_the_traceback_of_a_sync_step_raising_timeout_error_shows_the_step(
    engine: Engine, define: Define
) -> None:
    """error_detail is there to find the failing line: it must reach into the step function."""
    defn = define("t-own-tb", [{"key": "api", "call": "tests.stepfns:own_timeout"}])
    run_id = await run_to_end(defn, "failed")
    detail = (await step_of(run_id, "api"))["error_detail"]
    assert "in own_timeout" in detail, detail


# --- finishing a run ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "last"),
    [("chain", "tests.stepfns:noop"), ("chain", "tests.stepfns:anoop"), ("two-ends", "tests.stepfns:noop")],
    ids=["sync", "async", "two-ends"],
)
async def test_a_run_finishes_in_the_commit_of_its_last_step(
    engine: Engine, define: Define, shape: str, last: str
) -> None:
    # The commit that completes the last step finishes the run too (no commit of its own): the two event
    # rows share that commit's time. With two steps that nothing needs, the one completing second finishes it.
    steps: list[dict[str, Any]] = [{"key": "first", "call": "tests.stepfns:noop"}]
    ends = ["end"] if shape == "chain" else ["end", "other"]
    steps += [{"key": key, "call": last, "needs": ["first"]} for key in ends]
    defn = define(f"finish-{shape}", steps)
    run_id = await run_to_end(defn, "completed")
    rows = await fetch("SELECT id, kind, step_key, to_status FROM events WHERE run_id = ? ORDER BY id", (run_id,))
    assert [r["to_status"] for r in rows if r["kind"] == "run"] == ["queued", "running", "completed"]
    *_, before, step, finished = rows
    assert (finished["kind"], finished["to_status"]) == ("run", "completed")
    assert (step["kind"], step["step_key"] in ends, step["to_status"]) == ("step", True, "completed")
    assert await commits_of_events(run_id, before["id"]) in (1, None)  # None: PostgreSQL cannot tell


# --- errors ----------------------------------------------------------------------------------------


async def test_a_raising_step_fails_with_its_error_and_traceback(engine: Engine, define: Define) -> None:
    defn = define("err", [{"key": "x", "call": "tests.stepfns:boom"}, {"key": "y", "call": "tests.stepfns:noop"}])
    run_id = await run_to_end(defn, "failed")
    run = (await queries.run_detail(run_id)).to_json()
    assert run["error"] == "step 'x' failed: ValueError: the step exploded"
    x, y = run["steps"]
    assert (x["status"], x["error"]) == ("failed", "ValueError: the step exploded")
    assert x["error_detail"] is not None
    assert x["error_detail"].startswith("Traceback (most recent call last)")
    assert 'raise ValueError("the step exploded")' in x["error_detail"]
    assert "stepfns.py" in x["error_detail"]
    assert (y["status"], y["attempt"], y["output"]) == ("pending", 0, None)
    assert stepfns.CALLS["noop"] == 0


async def test_independent_branches_complete_when_another_branch_fails(engine: Engine, define: Define) -> None:
    defn = define(
        "branches",
        [
            {"key": "bad", "call": "tests.stepfns:boom", "needs": []},
            {"key": "good", "call": "tests.stepfns:nap", "needs": []},
            {"key": "after_bad", "call": "tests.stepfns:noop", "needs": ["bad"]},
            {"key": "after_good", "call": "tests.stepfns:noop", "needs": ["good"]},
            {"key": "join", "call": "tests.stepfns:collect", "needs": ["after_bad", "after_good"]},
        ],
        inputs={"sleep_s": {"type": "number", "default": 0.2}},
    )
    run_id = await run_to_end(defn, "failed")
    run = (await queries.run_detail(run_id)).to_json()
    assert {s["key"]: s["status"] for s in run["steps"]} == {
        "bad": "failed",
        "good": "completed",
        "after_bad": "pending",
        "after_good": "completed",
        "join": "pending",
    }
    assert run["error"] == "step 'bad' failed: ValueError: the step exploded"
    assert (stepfns.CALLS["noop"], stepfns.CALLS["collect"]) == (1, 0)


async def test_retry_of_a_failed_step_completes_the_run_in_a_second_attempt(engine: Engine, define: Define) -> None:
    defn = define(
        "retry",
        [{"key": "flaky", "call": "tests.stepfns:fail_first"}, {"key": "use", "call": "tests.stepfns:use_upstream"}],
    )
    run_id = await run_to_end(defn, "failed")
    assert (await step_of(run_id, "flaky"))["error"] == "RuntimeError: transient failure"
    plan = await operations.rerun_from(run_id, "flaky", "alice")
    assert plan.rerun == ["flaky", "use"]
    assert await wait_run(run_id, "completed", "failed") == "completed"
    run = (await queries.run_detail(run_id)).to_json()
    assert run["error"] is None
    flaky, use = run["steps"]
    assert (flaky["attempt"], flaky["output"], flaky["error"]) == (2, "succeeded on call 2", None)
    assert use["output"] == "used:succeeded on call 2"
    history = await attempts_of(run_id, "flaky")
    assert [(a["number"], a["status"], a["error"]) for a in history] == [
        (1, "failed", "RuntimeError: transient failure"),
        (2, "completed", None),
    ]


@pytest.mark.parametrize("call", ["raises_cancelled", "sync_raises_cancelled"])
async def test_a_step_raising_cancelled_error_of_its_own_fails_and_nothing_stays_running(
    engine: Engine, define: Define, call: str
) -> None:
    """A CancelledError from the step's own awaitable is the step's failure, not a cancel of the run.

    Whatever the driver concludes, the run, the step and the attempt must end in true states.
    """
    defn = define("own-cancel", [{"key": "x", "call": f"tests.stepfns:{call}"}])
    run_id = await operations.start_run(defn, {}, "tester")
    assert await wait_run(run_id, "completed", "failed", "cancelled") == "failed"
    await wait_for(lambda: no_driver(engine, run_id), PROMPT_S, "the driver to stop")
    assert await running_rows() == []
    x = await step_of(run_id, "x")
    assert x["status"] == "failed"
    assert "CancelledError" in (x["error"] or "")
    [attempt] = await attempts_of(run_id, "x")
    assert attempt["status"] == "failed"


# --- output validation -----------------------------------------------------------------------------


async def test_a_wrong_number_of_alternatives_fails_the_step(engine: Engine, define: Define) -> None:
    defn = define("wrong", [{"key": "gen", "call": "tests.stepfns:wrong_count", "alternatives": 2}])
    run_id = await operations.start_run(defn, {}, "tester")
    assert await wait_run(run_id, "completed", "failed", "waiting") == "failed"
    gen = await step_of(run_id, "gen")
    assert gen["status"] == "failed"
    assert gen["error"] == (
        "OutputError: the step asks for 2 alternatives: return a list of 2 outputs, got a list of 1"
    )
    assert gen["alternatives"] == []


async def test_an_output_that_is_not_json_fails_the_step(engine: Engine, define: Define) -> None:
    defn = define("notjson", [{"key": "x", "call": "tests.stepfns:not_json"}])
    run_id = await run_to_end(defn, "failed")
    x = await step_of(run_id, "x")
    assert x["error"].startswith("OutputError: output: object is not a JSON value")
    [attempt] = await attempts_of(run_id, "x")
    assert (attempt["status"], attempt["outputs"]) == ("failed", None)


async def test_progress_and_logs_are_stored_on_the_attempt(engine: Engine, define: Define) -> None:
    defn = define("prog", [{"key": "p", "call": "tests.stepfns:progress_and_logs"}])
    run_id = await run_to_end(defn, "completed")
    p = await step_of(run_id, "p")
    assert (p["progress"], p["progress_message"], p["logs"]) == (1.0, "part 3", ["line 1", "line 2", "line 3"])


# --- parallel branches -----------------------------------------------------------------------------


async def test_parallel_branches_run_at_the_same_time_and_the_join_sees_all(engine: Engine, define: Define) -> None:
    defn = define(
        "fan",
        [
            {"key": "a", "call": "tests.stepfns:nap", "needs": []},
            {"key": "b", "call": "tests.stepfns:nap", "needs": []},
            {"key": "c", "call": "tests.stepfns:nap", "needs": []},
            {"key": "join", "call": "tests.stepfns:collect", "needs": ["a", "b", "c"]},
        ],
        inputs={"sleep_s": {"type": "number", "default": 0.5}},
    )
    run_id = await run_to_end(defn, "completed")
    assert (await step_of(run_id, "join"))["output"] == {"a": "a woke", "b": "b woke", "c": "c woke"}
    branches = [a for a in await queries.list_attempts(run_id) if a["step"] in ("a", "b", "c")]
    starts = [datetime.fromisoformat(str(a["started_at"])) for a in branches]
    ends = [datetime.fromisoformat(str(a["finished_at"])) for a in branches]
    assert max(starts) < min(ends)  # all three were running at once (whatever the machine's speed)
    assert stepfns.CALLS["collect"] == 1


async def test_a_join_whose_needs_finish_together_is_started_once(engine: Engine, define: Define) -> None:
    """Runs side by side share commits, so several needs of a join often complete in one go.

    The join must be started exactly once and each run must complete.
    """
    keys = [f"b{i}" for i in range(6)]
    defn = define(
        "fan-in",
        [
            *({"key": k, "call": "tests.stepfns:nap", "needs": []} for k in keys),
            {"key": "join", "call": "tests.stepfns:collect", "needs": keys},
        ],
        inputs={"sleep_s": {"type": "number", "default": 0.05}},
    )
    runs = [await operations.start_run(defn, {}, "tester") for _ in range(4)]
    outcomes = {}
    for run_id in runs:
        await wait_run(run_id, "completed", "failed")
        await wait_for(lambda r=run_id: no_driver(engine, r), PROMPT_S, "the driver to stop")  # type: ignore[misc]
        outcomes[run_id] = (await queries.run_detail(run_id)).to_json()["error"]
    assert outcomes == dict.fromkeys(runs)
    for run_id in runs:
        assert len(await attempts_of(run_id, "join")) == 1
    assert stepfns.CALLS["collect"] == 4


async def test_a_selection_while_another_branch_runs_continues_the_same_run(engine: Engine, define: Define) -> None:
    defn = define(
        "select-live",
        [
            {"key": "gen", "call": "tests.stepfns:alternatives", "alternatives": 2, "select": "human", "needs": []},
            {"key": "slow", "call": "tests.stepfns:blocking", "needs": []},
            {"key": "use", "call": "tests.stepfns:use_upstream", "needs": ["gen"]},
        ],
    )
    run_id = await operations.start_run(defn, {}, "tester")
    await wait_for(lambda: _step_status(run_id, "gen", "waiting"), 5, "gen waiting")
    assert await run_status(run_id) == "running"
    assert await operations.select(run_id, "gen", 1, "alice")
    await wait_for(lambda: _step_status(run_id, "use", "completed"), 5, "use completed while slow still runs")
    assert (await step_of(run_id, "use"))["output"] == "used:call1-alt1"
    assert await run_status(run_id) == "running"
    stepfns.RELEASE.set()
    assert await wait_run(run_id, "completed", "failed") == "completed"
    run_moves = [(e["from_status"], e["to_status"]) for e in await queries.events_after(run_id) if e["kind"] == "run"]
    assert run_moves == [(None, "queued"), ("queued", "running"), ("running", "completed")]


async def _step_status(run_id: int, key: str, status: str) -> bool:
    return bool((await step_of(run_id, key))["status"] == status)


# --- shutdown and liveness -------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["sleepy", "blocking_watch"])
async def test_engine_shutdown_mid_step_fails_the_run_as_interrupted(
    settings: Settings, define: Define, call: str
) -> None:
    stepfns.reset()
    defn = define(
        "shut",
        [{"key": "work", "call": f"tests.stepfns:{call}"}, {"key": "after", "call": "tests.stepfns:noop"}],
        inputs=SLEEP_INPUT,
    )
    async with engine_running(settings) as eng:
        run_id = await operations.start_run(defn, {}, "tester")
        await wait_for(lambda: calls(call), 5, "the step to start")
        started = time.monotonic()
        await eng.stop()
        assert time.monotonic() - started < PROMPT_S  # not the step's 30 s, nor the engine's 10 s last wait
    run = (await queries.run_detail(run_id)).to_json()
    assert run["status"] == "failed"
    assert run["error"] is not None
    assert run["error"].startswith("interrupted:")
    assert run["finished_at"] is not None
    assert [s["status"] for s in run["steps"]] == ["failed", "pending"]
    [attempt] = await attempts_of(run_id, "work")
    assert attempt["status"] == "failed"
    assert attempt["error"].startswith("interrupted:")
    assert "'work'" in attempt["error"]
    assert await running_rows() == []
    if call == "blocking_watch":
        await wait_for(lambda: calls("blocking_saw_cancel"), PROMPT_S, "the sync step to see ctx.is_cancelled")


async def test_the_interrupted_run_error_names_the_step_that_was_running(settings: Settings, define: Define) -> None:
    """The run's error is what the runs list shows: it should say where the run was interrupted."""
    stepfns.reset()
    defn = define("shut-name", [{"key": "work", "call": "tests.stepfns:sleepy"}], inputs=SLEEP_INPUT)
    async with engine_running(settings) as eng:
        run_id = await operations.start_run(defn, {}, "tester")
        await wait_for(lambda: calls("sleepy"), 5, "the step to start")
        await eng.stop()
    error = (await queries.run_detail(run_id)).to_json()["error"]
    assert error is not None
    assert error.startswith("interrupted:")
    assert "'work'" in error, error


async def test_an_interrupted_run_resumes_on_the_next_engine(settings: Settings, define: Define) -> None:
    stepfns.reset()
    defn = define("shut-resume", [{"key": "work", "call": "tests.stepfns:sleep_once"}])
    async with engine_running(settings) as eng:
        run_id = await operations.start_run(defn, {}, "tester")
        await wait_for(lambda: calls("sleep_once"), 5, "the step to start")
        await eng.stop()
    assert await run_status(run_id) == "failed"
    async with engine_running(settings):
        await operations.resume_run(run_id, "alice")
        assert await wait_run(run_id, "completed", "failed") == "completed"
    assert [(a["number"], a["status"]) for a in await attempts_of(run_id, "work")] == [(1, "failed"), (2, "completed")]


async def test_shutdown_leaves_waiting_runs_alone(settings: Settings, define: Define) -> None:
    stepfns.reset()
    defn = define("shut-wait", [{"key": "gen", "call": "tests.stepfns:alternatives", "alternatives": 2}])
    async with engine_running(settings):
        run_id = await operations.start_run(defn, {}, "tester")
        assert await wait_run(run_id, "waiting", "failed") == "waiting"
    assert await run_status(run_id) == "waiting"
    assert (await step_of(run_id, "gen"))["alternatives"] == ["call1-alt0", "call1-alt1"]


async def test_a_running_run_keeps_a_fresh_heartbeat(engine: Engine, define: Define) -> None:
    defn = define("beat", [{"key": "block", "call": "tests.stepfns:blocking"}])  # a sync step cannot stall heartbeats
    run_id = await operations.start_run(defn, {}, "tester")
    await wait_for(lambda: calls("blocking"), 5, "the step to start")

    async def heartbeat() -> Any:
        return (await fetch("SELECT heartbeat_at FROM runs WHERE id = ?", (run_id,)))[0]["heartbeat_at"]

    first = await heartbeat()

    async def moved() -> bool:
        return bool(await heartbeat() != first)

    await wait_for(moved, PROMPT_S, "the heartbeat to be refreshed")  # heartbeat_interval_s is 0.2 in tests
    run = (await queries.run_detail(run_id)).to_json()
    assert (run["status"], run["owner"]) == ("running", engine.owner)
    stepfns.RELEASE.set()
    assert await wait_run(run_id, "completed", "failed") == "completed"
    assert (await queries.run_detail(run_id)).to_json()["heartbeat_at"] is None
