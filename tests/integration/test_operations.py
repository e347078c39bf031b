"""Operations on runs through a real engine and SQLite: retry with alternatives, readiness from
status, stale flags, concurrent reruns/selections/cancels, cancel and resume."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from engine import operations, queries
from engine.definitions import WorkflowDef
from engine.engine import Engine
from engine.errors import Conflict, InvalidInput, NotFound
from engine.registry import Registry
from engine.settings import Settings
from engine.store import fetch
from models.status import RUN_TRANSITIONS, STEP_TRANSITIONS, RunStatus, StepStatus
from tests import stepfns
from tests.conftest import attempts_of, engine_running, events_of, run_status, run_to_end, step_of, wait_for, wait_run

Define = Callable[..., WorkflowDef]


pytestmark = pytest.mark.usefixtures("audit_clean")


def define_pick(
    define: Define, name: str = "pick", alternatives: int = 3, downstream: str = "use_upstream"
) -> WorkflowDef:
    """gen: N alternatives a person picks from → use: consumes the selection."""
    return define(
        name,
        [
            {"key": "gen", "call": "tests.stepfns:alternatives", "alternatives": alternatives, "select": "human"},
            {"key": "use", "call": f"tests.stepfns:{downstream}"},
        ],
    )


async def start_waiting_pick(define: Define, name: str, alternatives: int = 3, downstream: str = "use_upstream") -> int:
    """Start a run of `define_pick`'s workflow and wait until `gen` waits for a person to pick: where the tests of
    selecting, cancelling and rerunning a waiting step begin. Returns the run id."""
    defn = define_pick(define, name, alternatives, downstream)
    run_id = await operations.start_run(defn, {}, "tester")
    assert await wait_run(run_id, "waiting", "failed") == "waiting"
    return run_id


# --- start ---------------------------------------------------------------------------------------


async def test_a_started_run_is_returned_as_reading_it_back_shows_it(db: str, define: Define) -> None:
    """The API answers a start with the run as created, without reading it back: it must be exactly
    what a read shows before an engine touches it (every field, steps in declared order)."""
    defn = define(
        "shown",
        [
            {"key": "zeta", "label": "Zeta <z>", "call": "tests.stepfns:noop", "retries": 2, "retry_delay_s": 1},
            {"key": "alpha", "call": "tests.stepfns:alternatives", "alternatives": 3, "select": "human"},
            {"key": "mid", "call": "tests.stepfns:use_upstream", "needs": ["alpha", "zeta"]},
        ],
        inputs={
            "topic": {"type": "string"},
            "count": {"type": "integer", "default": 2},
            "extra": {"type": "json", "required": False},
        },
    )
    inputs = {"extra": {"b": [1, 2.5, None], "a": "é"}, "topic": "bees"}
    started = await operations.start_run_detail(defn, inputs, "tester")

    assert started.to_json() == (await queries.run_detail(started.id)).to_json()
    assert list(started.to_json()["inputs"]) == ["topic", "count", "extra"]
    for _ in range(2):  # the API's answer; the second takes the steps' part that the first one made
        answered = await operations.start_run_json(defn, inputs, "tester")
        assert answered == (await queries.run_detail(answered["id"])).to_json()
        assert list(answered["inputs"]) == ["topic", "count", "extra"]


# --- retry of a step with alternatives -------------------------------------------------------------


async def test_retry_of_a_step_with_alternatives_runs_it_again_in_a_new_attempt(
    engine: Engine, define: Define, api: httpx.AsyncClient
) -> None:
    run_id = await start_waiting_pick(define, "pick")
    gen = await step_of(run_id, "gen")
    assert (gen["status"], gen["alternatives"], gen["selected_index"]) == (
        "waiting",
        ["call1-alt0", "call1-alt1", "call1-alt2"],
        None,
    )
    assert await operations.select(run_id, "gen", 1, "alice") is True
    assert await wait_run(run_id, "completed", "failed") == "completed"
    assert (await step_of(run_id, "use"))["output"] == "used:call1-alt1"
    assert (stepfns.CALLS["alternatives"], stepfns.CALLS["use_upstream"]) == (1, 1)

    plan = await operations.rerun_from(run_id, "gen", "alice")
    assert (plan.rerun, plan.keep) == (["gen", "use"], [])
    assert await wait_run(run_id, "waiting", "failed") == "waiting"
    assert stepfns.CALLS["alternatives"] == 2  # really executed again

    gen = await step_of(run_id, "gen")
    assert gen["status"] == "waiting"
    assert gen["attempt"] == 2
    assert gen["alternatives"] == ["call2-alt0", "call2-alt1", "call2-alt2"]
    assert gen["selected_index"] is None  # the old selection does not leak into the new attempt
    assert gen["output"] is None
    use = await step_of(run_id, "use")
    assert (use["status"], use["output"], use["alternatives"]) == ("pending", None, [])

    response = await api.get(f"/api/runs/{run_id}/attempts")
    assert response.status_code == 200
    gen_attempts = [a for a in response.json() if a["step"] == "gen"]
    assert [(a["number"], a["current"], a["status"]) for a in gen_attempts] == [
        (1, False, "completed"),
        (2, True, "completed"),
    ]
    assert gen_attempts[0]["outputs"] == ["call1-alt0", "call1-alt1", "call1-alt2"]
    assert gen_attempts[0]["selected_index"] == 1  # history keeps the old choice
    assert gen_attempts[1]["outputs"] == ["call2-alt0", "call2-alt1", "call2-alt2"]
    assert gen_attempts[1]["selected_index"] is None

    assert await operations.select(run_id, "gen", 2, "alice") is True
    assert await wait_run(run_id, "completed", "failed") == "completed"
    assert stepfns.CALLS["use_upstream"] == 2
    use = await step_of(run_id, "use")
    assert (use["attempt"], use["output"]) == (2, "used:call2-alt2")
    use_attempts = await attempts_of(run_id, "use")
    assert [a["outputs"] for a in use_attempts] == [["used:call1-alt1"], ["used:call2-alt2"]]
    assert use_attempts[1]["consumed"] == {"gen": {"attempt": 2, "index": 2}}
    assert stepfns.CALLS["alternatives"] == 2


async def test_a_rerun_step_shows_nothing_of_its_old_attempt_and_is_executed_not_skipped(
    settings: Settings, define: Define
) -> None:
    """Readiness comes from status alone: outputs and a selection on the old attempt change nothing."""
    stepfns.reset()
    defn = define(
        "ready",
        [
            {"key": "a", "call": "tests.stepfns:noop"},
            {"key": "b", "call": "tests.stepfns:alternatives", "alternatives": 2, "select": "auto"},
            {"key": "c", "call": "tests.stepfns:use_upstream"},
        ],
    )
    run_id = await operations.start_run(defn, {}, "tester")
    async with engine_running(settings):
        assert await wait_run(run_id, "completed", "failed") == "completed"
    plan = await operations.rerun_from(run_id, "b", "alice")
    assert (plan.rerun, plan.keep) == (["b", "c"], ["a"])
    # no engine now: the run is queued and the reset steps show nothing from their old attempts
    assert await run_status(run_id) == "queued"
    for key in ("b", "c"):
        step = await step_of(run_id, key)
        assert (step["status"], step["output"], step["alternatives"], step["selected_index"]) == (
            "pending",
            None,
            [],
            None,
        )
        assert (step["started_at"], step["completed_at"], step["error"]) == (None, None, None)
    assert (await step_of(run_id, "a"))["output"] == "ok"
    async with engine_running(settings):
        assert await wait_run(run_id, "completed", "failed") == "completed"
    assert (stepfns.CALLS["noop"], stepfns.CALLS["alternatives"], stepfns.CALLS["use_upstream"]) == (1, 2, 2)
    b, c = await step_of(run_id, "b"), await step_of(run_id, "c")
    assert (b["attempt"], b["output"]) == (2, "call2-alt0")
    assert (c["attempt"], c["output"]) == (2, "used:call2-alt0")
    starts = [(e["step"], e["attempt"]) for e in await events_of(run_id, "step") if e["to_status"] == "running"]
    assert starts == [("a", 1), ("b", 1), ("c", 1), ("b", 2), ("c", 2)]


async def test_rerun_plan_previews_without_changing_anything(engine: Engine, define: Define) -> None:
    defn = define(
        "plan",
        [
            {"key": "a", "call": "tests.stepfns:noop"},
            {"key": "b", "call": "tests.stepfns:noop"},
            {"key": "side", "call": "tests.stepfns:noop", "needs": []},
            {"key": "c", "call": "tests.stepfns:noop", "needs": ["b"]},
        ],
    )
    run_id = await run_to_end(defn, "completed")
    events_before = await events_of(run_id)
    plan = await operations.rerun_plan(run_id, "b")
    assert (plan.rerun, plan.keep, plan.allowed, plan.reason) == (["b", "c"], ["a", "side"], True, None)
    assert await events_of(run_id) == events_before
    assert await run_status(run_id) == "completed"
    with pytest.raises(NotFound, match="no step 'zzz'"):
        await operations.rerun_plan(run_id, "zzz")


async def test_rerun_and_resume_are_refused_while_the_run_is_active(engine: Engine, define: Define) -> None:
    defn = define("busy", [{"key": "a", "call": "tests.stepfns:blocking"}])
    run_id = await operations.start_run(defn, {}, "tester")
    await wait_for(lambda: _status_is(run_id, "a", "running"), 5, "step a running")
    plan = await operations.rerun_plan(run_id, "a")
    assert plan.allowed is False
    assert plan.reason is not None
    assert "running" in plan.reason
    with pytest.raises(Conflict):
        await operations.rerun_from(run_id, "a", "alice")
    with pytest.raises(Conflict):
        await operations.resume_run(run_id, "alice")
    stepfns.RELEASE.set()
    assert await wait_run(run_id, "completed", "failed") == "completed"
    assert stepfns.CALLS["blocking"] == 1
    assert [e for e in await events_of(run_id, "action") if "rerun" in (e["message"] or "")] == []


async def _status_is(run_id: int, key: str, status: str) -> bool:
    return bool((await step_of(run_id, key))["status"] == status)


# --- stale flags -----------------------------------------------------------------------------------


async def test_changing_a_completed_selection_flags_consumers_stale_until_rerun(engine: Engine, define: Define) -> None:
    defn = define(
        "stale",
        [
            {"key": "gen", "call": "tests.stepfns:alternatives", "alternatives": 2, "select": "human"},
            {"key": "mid", "call": "tests.stepfns:use_upstream"},
            {"key": "end", "call": "tests.stepfns:use_upstream"},
            {"key": "other", "call": "tests.stepfns:noop", "needs": []},
        ],
    )
    run_id = await operations.start_run(defn, {}, "tester")
    assert await wait_run(run_id, "waiting", "failed") == "waiting"
    assert await operations.select(run_id, "gen", 0, "alice") is True
    assert await wait_run(run_id, "completed", "failed") == "completed"
    assert (await step_of(run_id, "end"))["output"] == "used:used:call1-alt0"

    assert await operations.select(run_id, "gen", 1, "bob") is True
    run = (await queries.run_detail(run_id)).to_json()
    assert run["status"] == "completed"
    steps = {s["key"]: s for s in run["steps"]}
    assert (steps["gen"]["selected_index"], steps["gen"]["stale"]) == (1, False)
    assert steps["other"]["stale"] is False
    for key in ("mid", "end"):
        assert steps[key]["stale"] is True
        assert steps[key]["status"] == "completed"
        reason = steps[key]["stale_reason"]
        assert reason is not None
        assert "'gen'" in reason
        assert "from alternative 1 to 2" in reason
    assert run["stale_steps"] == ["mid", "end"]
    assert stepfns.CALLS["use_upstream"] == 2  # nothing re-ran by itself
    assert [e["step"] for e in await events_of(run_id, "stale")] == ["mid", "end"]

    # the same choice again is a no-op: no event, no change
    events_before = await events_of(run_id)
    assert await operations.select(run_id, "gen", 1, "bob") is False
    assert await events_of(run_id) == events_before

    await operations.rerun_from(run_id, "mid", "bob")
    assert await wait_run(run_id, "completed", "failed") == "completed"
    run = (await queries.run_detail(run_id)).to_json()
    steps = {s["key"]: s for s in run["steps"]}
    assert [(steps[k]["stale"], steps[k]["stale_reason"]) for k in ("mid", "end")] == [(False, None), (False, None)]
    assert steps["end"]["output"] == "used:used:call1-alt1"
    assert run["stale_steps"] == []
    assert stepfns.CALLS["alternatives"] == 1  # gen was kept


async def test_changing_a_completed_selection_while_the_run_is_running_is_a_conflict(
    engine: Engine, define: Define
) -> None:
    run_id = await start_waiting_pick(define, "busy-pick", 2, downstream="blocking")
    assert await operations.select(run_id, "gen", 0, "alice")
    await wait_for(lambda: _status_is(run_id, "use", "running"), 5, "use running")
    events_before = await events_of(run_id)
    with pytest.raises(Conflict, match="running"):
        await operations.select(run_id, "gen", 1, "bob")
    assert (await step_of(run_id, "gen"))["selected_index"] == 0
    assert [e for e in await events_of(run_id) if e not in events_before and e["kind"] == "action"] == []
    stepfns.RELEASE.set()
    assert await wait_run(run_id, "completed", "failed") == "completed"


async def test_changing_a_completed_selection_while_the_run_is_queued_is_a_conflict(
    settings: Settings, define: Define
) -> None:
    stepfns.reset()
    defn = define_pick(define, "queued-pick", 2)
    run_id = await operations.start_run(defn, {}, "tester")
    async with engine_running(settings):
        assert await wait_run(run_id, "waiting", "failed") == "waiting"
        assert await operations.select(run_id, "gen", 0, "alice")
        assert await wait_run(run_id, "completed", "failed") == "completed"
    await operations.rerun_from(run_id, "use", "alice")  # queued, and no engine to claim it
    assert await run_status(run_id) == "queued"
    with pytest.raises(Conflict, match="queued"):
        await operations.select(run_id, "gen", 1, "bob")
    assert (await step_of(run_id, "gen"))["selected_index"] == 0
    async with engine_running(settings):
        assert await wait_run(run_id, "completed", "failed") == "completed"


async def test_changing_a_selection_flags_a_waiting_consumer_of_the_old_choice(engine: Engine, define: Define) -> None:
    """A dependent still waiting for a choice has consumed the old selection too.

    Its alternatives were made from the abandoned choice: once it is picked it must show as stale (dependents
    that consumed the old choice are flagged stale until re-run: README, "Alternatives and human choices").
    """
    defn = define(
        "two-picks",
        [
            {"key": "gen", "call": "tests.stepfns:alternatives", "alternatives": 2, "select": "human"},
            {"key": "pick", "call": "tests.stepfns:alternatives", "alternatives": 2, "select": "human"},
        ],
    )
    run_id = await operations.start_run(defn, {}, "tester")
    assert await wait_run(run_id, "waiting", "failed") == "waiting"
    assert await operations.select(run_id, "gen", 0, "alice")
    await wait_for(lambda: _status_is(run_id, "pick", "waiting"), 5, "pick waiting")
    assert await wait_run(run_id, "waiting", "failed") == "waiting"
    consumed = (await attempts_of(run_id, "pick"))[0]["consumed"]
    assert consumed == {"gen": {"attempt": 1, "index": 0}}
    assert await operations.select(run_id, "gen", 1, "bob")  # pick's alternatives came from choice 0
    assert await wait_run(run_id, "waiting", "failed") == "waiting"
    assert await operations.select(run_id, "pick", 0, "alice")
    assert await wait_run(run_id, "completed", "failed") == "completed"
    pick = await step_of(run_id, "pick")
    assert pick["stale"] is True, "pick consumed gen's alternative 1 but gen now selects 2, and nothing says so"


# --- concurrent operations -------------------------------------------------------------------------


async def rerun_five_at_once(run_id: int, key: str) -> None:
    """Five people rerun `run_id` from `key` at the same moment: exactly one rerun takes effect, the other four are
    refused with a Conflict, and the run then completes."""
    results = await asyncio.gather(
        *(operations.rerun_from(run_id, key, f"user{i}") for i in range(5)), return_exceptions=True
    )
    assert sum(isinstance(r, operations.RerunPlan) for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == 4, results
    assert await wait_run(run_id, "completed", "failed") == "completed"


async def test_concurrent_reruns_of_a_completed_run_take_effect_once(engine: Engine, define: Define) -> None:
    defn = define(
        "double",
        [
            {"key": "gen", "call": "tests.stepfns:alternatives", "select": "auto"},
            {"key": "tail", "call": "tests.stepfns:nap"},
        ],
        inputs={"sleep_s": {"type": "number", "default": 0.2}},
    )
    run_id = await run_to_end(defn, "completed")
    await rerun_five_at_once(run_id, "gen")
    gen = await step_of(run_id, "gen")
    assert (gen["attempt"], gen["output"]) == (2, ["call2-alt0"])  # one alternative: the list is the output
    assert stepfns.CALLS["alternatives"] == 2
    assert len(await attempts_of(run_id, "gen")) == 2
    assert len(await attempts_of(run_id, "tail")) == 2
    reruns = [e for e in await events_of(run_id, "action") if (e["message"] or "").startswith("rerun from")]
    assert len(reruns) == 1


async def test_concurrent_retries_of_a_failed_step_take_effect_once(engine: Engine, define: Define) -> None:
    defn = define(
        "flaky", [{"key": "a", "call": "tests.stepfns:fail_first"}, {"key": "b", "call": "tests.stepfns:noop"}]
    )
    run_id = await run_to_end(defn, "failed")
    await rerun_five_at_once(run_id, "a")
    a = await step_of(run_id, "a")
    assert (a["attempt"], a["output"]) == (2, "succeeded on call 2")
    assert (stepfns.CALLS["fail_first"], stepfns.CALLS["noop"]) == (2, 1)
    assert [x["status"] for x in await attempts_of(run_id, "a")] == ["failed", "completed"]


async def test_concurrent_selections_of_the_same_alternative_take_effect_once(engine: Engine, define: Define) -> None:
    run_id = await start_waiting_pick(define, "dsel", 2, downstream="blocking")
    results = await asyncio.gather(*(operations.select(run_id, "gen", 1, f"u{i}") for i in range(3)))
    assert sorted(results) == [False, False, True]
    await release_and_assert_selected_once(run_id, 1)


async def test_concurrent_selections_of_different_alternatives_take_effect_once(engine: Engine, define: Define) -> None:
    run_id = await start_waiting_pick(define, "dsel2", 2, downstream="blocking")
    results = await asyncio.gather(
        operations.select(run_id, "gen", 0, "alice"), operations.select(run_id, "gen", 1, "bob"), return_exceptions=True
    )
    winners = [i for i, r in enumerate(results) if r is True]
    assert len(winners) == 1, results
    loser = results[1 - winners[0]]
    assert loser is False or isinstance(loser, Conflict), loser
    await release_and_assert_selected_once(run_id, winners[0])


async def release_and_assert_selected_once(run_id: int, index: int) -> None:
    """Let the blocking step after `gen` finish, and check the run completed with alternative `index` selected by
    one action only: one selection event, one completion of `gen`, one call of each step function."""
    stepfns.RELEASE.set()
    assert await wait_run(run_id, "completed", "failed") == "completed"
    gen = await step_of(run_id, "gen")
    assert (gen["status"], gen["attempt"], gen["selected_index"]) == ("completed", 1, index)
    selected = [e for e in await events_of(run_id, "action") if (e["message"] or "").startswith("selected")]
    assert len(selected) == 1
    completions = [e for e in await events_of(run_id, "step") if e["step"] == "gen" and e["to_status"] == "completed"]
    assert len(completions) == 1
    assert stepfns.CALLS["blocking"] == 1
    assert stepfns.CALLS["alternatives"] == 1


async def test_concurrent_cancels_take_effect_once(engine: Engine, define: Define) -> None:
    defn = define("dcancel", [{"key": "a", "call": "tests.stepfns:blocking_watch"}])
    run_id = await operations.start_run(defn, {}, "tester")
    await wait_for(lambda: _status_is(run_id, "a", "running"), 5, "a running")
    results = await asyncio.gather(*(operations.cancel_run(run_id, f"u{i}") for i in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert await run_status(run_id) == "cancelled"
    assert len([e for e in await events_of(run_id, "run") if e["to_status"] == "cancelled"]) == 1
    assert len(await events_of(run_id, "action")) == 2  # started the run, cancelled the run
    assert await operations.cancel_run(run_id, "late") is False


# --- cancel (operation side) -----------------------------------------------------------------------


async def test_cancel_of_a_queued_run_leaves_its_steps_pending_and_it_can_be_resumed(
    settings: Settings, define: Define
) -> None:
    stepfns.reset()
    defn = define("q", [{"key": "a", "call": "tests.stepfns:noop"}, {"key": "b", "call": "tests.stepfns:noop"}])
    run_id = await operations.start_run(defn, {}, "tester")
    assert await operations.cancel_run(run_id, "alice") is True
    run = (await queries.run_detail(run_id)).to_json()
    assert (run["status"], run["error"]) == ("cancelled", "cancelled by alice")
    assert [s["status"] for s in run["steps"]] == ["pending", "pending"]
    async with engine_running(settings):
        await asyncio.sleep(0.3)  # an engine must not claim a cancelled run
        assert await run_status(run_id) == "cancelled"
        assert stepfns.CALLS["noop"] == 0
        await operations.resume_run(run_id, "alice")
        assert await wait_run(run_id, "completed", "failed") == "completed"
    assert stepfns.CALLS["noop"] == 2


async def test_cancel_of_a_waiting_run_and_resume_keeps_the_alternatives(engine: Engine, define: Define) -> None:
    run_id = await start_waiting_pick(define, "wcancel", 2)
    assert await operations.cancel_run(run_id, "alice") is True
    assert await run_status(run_id) == "cancelled"
    gen = await step_of(run_id, "gen")
    assert (gen["status"], gen["alternatives"]) == ("waiting", ["call1-alt0", "call1-alt1"])
    await operations.resume_run(run_id, "alice")
    assert await wait_run(run_id, "waiting", "failed") == "waiting"
    assert stepfns.CALLS["alternatives"] == 1
    assert await operations.select(run_id, "gen", 1, "alice")
    assert await wait_run(run_id, "completed", "failed") == "completed"
    assert (await step_of(run_id, "use"))["output"] == "used:call1-alt1"


async def test_cancel_of_a_finished_run_is_a_conflict_and_changes_nothing(engine: Engine, define: Define) -> None:
    fine = define("fin", [{"key": "a", "call": "tests.stepfns:noop"}])
    bad = define("fin-bad", [{"key": "a", "call": "tests.stepfns:boom"}])
    for defn, status in ((fine, "completed"), (bad, "failed")):
        run_id = await operations.start_run(defn, {}, "tester")
        assert await wait_run(run_id, "completed", "failed") == status
        before = ((await queries.run_detail(run_id)).to_json(), await events_of(run_id))
        with pytest.raises(Conflict, match=f"already {status}"):
            await operations.cancel_run(run_id, "alice")
        assert ((await queries.run_detail(run_id)).to_json(), await events_of(run_id)) == before


async def test_resume_after_cancelling_a_running_step_runs_it_again(engine: Engine, define: Define) -> None:
    defn = define(
        "resume", [{"key": "a", "call": "tests.stepfns:sleep_once"}, {"key": "b", "call": "tests.stepfns:noop"}]
    )
    run_id = await operations.start_run(defn, {}, "tester")
    await wait_for(lambda: _status_is(run_id, "a", "running"), 5, "a running")
    assert await operations.cancel_run(run_id, "alice")
    await wait_for(lambda: _no_driver(engine, run_id), 10, "the driver to stop")
    plan = await operations.resume_run(run_id, "alice")
    assert plan.rerun == ["a", "b"]
    assert await wait_run(run_id, "completed", "failed") == "completed"
    attempts = await attempts_of(run_id, "a")
    assert [(x["number"], x["status"]) for x in attempts] == [(1, "cancelled"), (2, "completed")]
    assert attempts[0]["logs"] == ["call 1 started"]
    assert attempts[1]["outputs"] == ["done on call 2"]
    assert (stepfns.CALLS["sleep_once"], stepfns.CALLS["noop"]) == (2, 1)


async def _no_driver(engine: Engine, run_id: int) -> bool:
    return run_id not in engine.drivers


# --- bad requests ----------------------------------------------------------------------------------


async def test_operations_name_what_is_wrong(engine: Engine, define: Define, registry: Registry) -> None:
    run_id = await start_waiting_pick(define, "bad", 2)
    with pytest.raises(InvalidInput, match="out of range"):
        await operations.select(run_id, "gen", 2, "alice")
    with pytest.raises(InvalidInput, match="integer"):
        await operations.select(run_id, "gen", True, "alice")
    with pytest.raises(Conflict, match="pending"):
        await operations.select(run_id, "use", 0, "alice")
    with pytest.raises(NotFound, match="no step 'nope'"):
        await operations.select(run_id, "nope", 0, "alice")
    with pytest.raises(NotFound, match="does not exist"):
        await operations.rerun_from(run_id + 100, "gen", "alice")
    with pytest.raises(NotFound, match="does not exist"):
        await operations.cancel_run(run_id + 100, "alice")
    with pytest.raises(InvalidInput):
        await operations.start_run(registry.get("bad"), {"unknown": 1}, "alice")
    assert await run_status(run_id) == "waiting"
    assert (await step_of(run_id, "gen"))["selected_index"] is None


# --- the transition tables, through real flows -----------------------------------------------------


async def test_status_events_of_real_flows_follow_the_transition_tables(engine: Engine, define: Define) -> None:
    """Failure and retry, alternatives and selection, rerun, cancel: every event is an allowed move."""
    fail_def = define(
        "t-fail", [{"key": "a", "call": "tests.stepfns:fail_first"}, {"key": "b", "call": "tests.stepfns:noop"}]
    )
    pick_def = define_pick(define, "t-pick", 2)
    cancel_def = define("t-cancel", [{"key": "a", "call": "tests.stepfns:sleep_once"}])
    failing = await operations.start_run(fail_def, {}, "tester")
    assert await wait_run(failing, "failed") == "failed"
    await operations.rerun_from(failing, "a", "alice")
    assert await wait_run(failing, "completed", "failed") == "completed"
    picking = await operations.start_run(pick_def, {}, "tester")
    assert await wait_run(picking, "waiting") == "waiting"
    await operations.select(picking, "gen", 0, "alice")
    assert await wait_run(picking, "completed", "failed") == "completed"
    await operations.rerun_from(picking, "gen", "alice")
    assert await wait_run(picking, "waiting") == "waiting"
    cancelled = await operations.start_run(cancel_def, {}, "tester")
    await wait_for(lambda: _status_is(cancelled, "a", "running"), 5, "a running")
    await operations.cancel_run(cancelled, "alice")
    wrong = []
    for run_id in (failing, picking, cancelled):
        for e in await events_of(run_id):
            if e["kind"] == "run" and e["from_status"] is not None:
                if RunStatus(e["to_status"]) not in RUN_TRANSITIONS[RunStatus(e["from_status"])]:
                    wrong.append((run_id, "run", e["from_status"], e["to_status"]))
            elif (
                e["kind"] == "step" and StepStatus(e["to_status"]) not in STEP_TRANSITIONS[StepStatus(e["from_status"])]
            ):
                wrong.append((run_id, e["step"], e["from_status"], e["to_status"]))
    assert wrong == []


async def test_step_rows_change_status_only_through_events(engine: Engine, define: Define) -> None:
    """Replaying a run's step events ends in each step's current status (no silent status write)."""
    defn = define(
        "replay", [{"key": "a", "call": "tests.stepfns:fail_first"}, {"key": "b", "call": "tests.stepfns:noop"}]
    )
    run_id = await operations.start_run(defn, {}, "tester")
    assert await wait_run(run_id, "failed") == "failed"
    await operations.rerun_from(run_id, "a", "alice")
    assert await wait_run(run_id, "completed", "failed") == "completed"
    last: dict[str, str] = {"a": "pending", "b": "pending"}
    for e in await events_of(run_id, "step"):
        assert e["from_status"] == last[e["step"]], e
        last[e["step"]] = e["to_status"]
    rows = await fetch("SELECT key, status FROM steps WHERE run_id = ?", (run_id,))
    assert last == {r["key"]: r["status"] for r in rows}
