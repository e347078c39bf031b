"""The JSON API (ARCHITECTURE.md, "Stable interfaces"): every route, the documented shapes, JSON 4xx errors
for bad input.

Driven over ASGI on the real router, a real SQLite file and a running engine (the `api` fixture).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse

from engine.definitions import parse_definition
from engine.readmodel import created_run_json
from engine.registry import Registry
from engine.settings import Settings
from tests import stepfns
from tests.conftest import api_client, wait_for, wait_run
from ui.api import OrjsonResponse

RUN_FIELDS = {"id", "workflow", "status", "error", "inputs", "created_at", "started_at", "finished_at", "steps"}
STEP_FIELDS = {
    "key",
    "label",
    "status",
    "attempt",
    "output",
    "alternatives",
    "selected_index",
    "error",
    "stale",
    "started_at",
    "completed_at",
}
ACTOR = "api@127.0.0.1"  # httpx's ASGI transport connects from 127.0.0.1

Define = Callable[..., Any]


def error_of(response: httpx.Response, status: int, *names: str) -> dict[str, Any]:
    """Assert a JSON error with `status` whose message names each of `names`; returns the body."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("error"), str), body
    assert body["error"], body
    assert isinstance(body.get("message"), str), body
    assert body["message"], body
    for name in names:
        assert name in body["message"], f"{name!r} not named in {body['message']!r}"
    return body


def step_of(run: dict[str, Any], key: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["key"] == key)


async def get_run(api: httpx.AsyncClient, run_id: int) -> dict[str, Any]:
    r = await api.get(f"/api/runs/{run_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def start(api: httpx.AsyncClient, workflow: str, inputs: dict[str, Any] | None = None) -> int:
    r = await api.post("/api/runs", json={"workflow": workflow, "inputs": inputs or {}})
    assert r.status_code == 201, r.text
    run_id: int = r.json()["id"]
    return run_id


async def wait_step(api: httpx.AsyncClient, run_id: int, key: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        step = step_of(await get_run(api, run_id), key)
        return step if step["status"] == status else None

    found: dict[str, Any] = await wait_for(check, 10.0, f"step {key!r} of run {run_id} to be {status}")
    return found


def define_sequence(define: Define, name: str, keys: list[str]) -> None:
    define(name, [{"key": k, "label": f"Step {k.upper()}", "call": "tests.stepfns:noop"} for k in keys])


def define_pick(define: Define, name: str) -> None:
    """gen makes 3 alternatives for a person to pick; use consumes the chosen one."""
    define(
        name,
        [
            {
                "key": "gen",
                "label": "Generate",
                "call": "tests.stepfns:alternatives",
                "alternatives": 3,
                "select": "human",
            },
            {"key": "use", "label": "Use", "call": "tests.stepfns:use_upstream"},
        ],
    )


def define_blocked(define: Define, name: str) -> None:
    """gate blocks (in its thread) until stepfns.RELEASE is set; pick comes after it, still pending."""
    define(
        name,
        [
            {"key": "gate", "call": "tests.stepfns:blocking"},
            {"key": "pick", "call": "tests.stepfns:alternatives", "alternatives": 2, "select": "human"},
        ],
    )


# --- health and workflows -------------------------------------------------------------------------------


async def test_health_answers_ok(api: httpx.AsyncClient) -> None:
    r = await api.get("/api/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_workflows_are_listed_and_fetched_by_name(api: httpx.AsyncClient, define: Define) -> None:
    define(
        "api-wf-listed",
        [
            {"key": "first", "label": "First", "call": "tests.stepfns:noop"},
            {"key": "second", "call": "tests.stepfns:alternatives", "alternatives": 2, "select": "human"},
        ],
        description="two steps",
        inputs={"topic": {"type": "string", "description": "what about"}, "words": {"type": "integer", "default": 5}},
    )
    listed = await api.get("/api/workflows")
    assert listed.status_code == 200
    names = [w["name"] for w in listed.json()]
    assert "api-wf-listed" in names
    assert names == sorted(names)

    r = await api.get("/api/workflows/api-wf-listed")
    assert r.status_code == 200
    wf = r.json()
    assert wf["name"] == "api-wf-listed"
    assert wf["description"] == "two steps"
    assert [s["key"] for s in wf["steps"]] == ["first", "second"]
    assert wf["steps"][0]["label"] == "First"
    assert wf["steps"][1]["needs"] == ["first"]
    assert (wf["steps"][1]["alternatives"], wf["steps"][1]["select"]) == (2, "human")
    inputs = {i["name"]: i for i in wf["inputs"]}
    assert inputs["topic"]["required"] is True
    assert inputs["topic"]["type"] == "string"
    assert (inputs["words"]["required"], inputs["words"]["default"]) == (False, 5)


async def test_unknown_workflow_is_a_404_naming_it(api: httpx.AsyncClient) -> None:
    error_of(await api.get("/api/workflows/no-such-flow"), 404, "no-such-flow")


async def test_definition_errors_are_listed_and_reload_picks_up_new_files(
    api: httpx.AsyncClient, registry: Registry, tmp_path: Path
) -> None:
    directory = tmp_path / "defs"
    directory.mkdir()
    (directory / "fine.yaml").write_text(
        json.dumps({"name": "fine", "steps": [{"key": "a", "call": "tests.stepfns:noop"}]})
    )
    (directory / "broken.yaml").write_text("name: broken\nsteps:\n  - key: a\n    kind: python\n    bogus_field: 1\n")
    registry.load(directory)  # the API serves the test registry
    r = await api.get("/api/workflows/errors")
    assert r.status_code == 200
    errors = r.json()
    broken = [e for e in errors if e["source"].endswith("broken.yaml")]
    assert len(broken) == 1, errors
    assert broken[0]["message"], broken[0]
    assert not [e for e in errors if e["source"].endswith("fine.yaml")], errors
    # the broken workflow is named in the 404 for it
    error_of(await api.get("/api/workflows/broken"), 404, "broken")

    (directory / "later.yaml").write_text(
        json.dumps({"name": "later", "steps": [{"key": "a", "call": "tests.stepfns:noop"}]})
    )
    reloaded = await api.post("/api/workflows/reload")
    assert reloaded.status_code == 200
    assert "later" in reloaded.json()["workflows"]
    assert len(reloaded.json()["errors"]) == 1
    assert (await api.get("/api/workflows/later")).status_code == 200


async def test_two_apps_in_one_process_each_serve_their_own_definitions(settings: Settings) -> None:
    mine, theirs = Registry(), Registry()
    for registry, name in ((mine, "mine"), (theirs, "theirs")):
        registry.add(parse_definition({"name": name, "steps": [{"key": "a", "call": "tests.stepfns:noop"}]}, name))
    async with api_client(settings, mine) as first, api_client(settings, theirs) as second:
        assert [w["name"] for w in (await first.get("/api/workflows")).json()] == ["mine"]
        assert [w["name"] for w in (await second.get("/api/workflows")).json()] == ["theirs"]
        error_of(await first.post("/api/runs", json={"workflow": "theirs", "inputs": {}}), 404, "theirs")
        started = await second.post("/api/runs", json={"workflow": "theirs", "inputs": {}})
        assert started.status_code == 201, started.text
        assert started.json()["workflow"] == "theirs"


# --- starting and reading runs -----------------------------------------------------------------------------


async def test_post_run_is_201_with_the_documented_fields_and_steps_in_declared_order(
    api: httpx.AsyncClient, define: Define
) -> None:
    # Parallel branches declared out of alphabetical order: declared order must win, not completion order.
    define(
        "api-fields",
        [
            {"key": "zeta", "label": "Zeta", "call": "tests.stepfns:noop", "needs": []},
            {"key": "alpha", "label": "Alpha", "call": "tests.stepfns:echo_inputs", "needs": []},
            {"key": "mid", "label": "Mid", "call": "tests.stepfns:use_upstream", "needs": ["alpha", "zeta"]},
        ],
        inputs={"topic": {"type": "string"}, "count": {"type": "integer", "default": 2}},
    )
    r = await api.post("/api/runs", json={"workflow": "api-fields", "inputs": {"topic": "bees"}})
    assert r.status_code == 201, r.text
    run = r.json()
    assert set(run) >= RUN_FIELDS, RUN_FIELDS - set(run)
    assert run["workflow"] == "api-fields"
    assert run["status"] in {"queued", "running", "completed"}
    assert run["error"] is None
    assert run["inputs"] == {"topic": "bees", "count": 2}
    assert run["created_at"]
    assert [s["key"] for s in run["steps"]] == ["zeta", "alpha", "mid"]
    for step in run["steps"]:
        assert set(step) >= STEP_FIELDS, STEP_FIELDS - set(step)

    assert await wait_run(run["id"], "completed", "failed") == "completed"
    done = await get_run(api, run["id"])
    assert done["status"] == "completed"
    assert done["started_at"]
    assert done["finished_at"]
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert [s["key"] for s in done["steps"]] == ["zeta", "alpha", "mid"]
    assert [s["label"] for s in done["steps"]] == ["Zeta", "Alpha", "Mid"]
    for step in done["steps"]:
        assert step["status"] == "completed"
        assert step["attempt"] == 1
        assert step["error"] is None
        assert step["stale"] is False
        assert step["selected_index"] == 0
        assert step["alternatives"] == [step["output"]]
        assert step["started_at"]
        assert step["completed_at"]
        assert step["completed_at"] >= step["started_at"]
    assert step_of(done, "alpha")["output"] == {"topic": "bees", "count": 2}
    mid = step_of(done, "mid")["output"]
    assert mid.startswith("used:")
    assert "ok" in mid
    assert "bees" in mid


async def test_list_runs_filters_by_status_and_workflow_and_pages(api: httpx.AsyncClient, define: Define) -> None:
    define_sequence(define, "api-list-ok", ["a", "b"])
    define("api-list-bad", [{"key": "a", "call": "tests.stepfns:boom"}])
    ok1 = await start(api, "api-list-ok")
    bad = await start(api, "api-list-bad")
    ok2 = await start(api, "api-list-ok")
    for run_id in (ok1, bad, ok2):
        await wait_run(run_id, "completed", "failed")

    everything = (await api.get("/api/runs")).json()
    assert [r["id"] for r in everything] == [ok2, bad, ok1]  # newest first
    assert all(set(r) >= RUN_FIELDS - {"steps"} for r in everything)
    assert all(r.get("steps") is None for r in everything)  # summaries by default
    with_steps = (await api.get("/api/runs", params={"include_steps": "true"})).json()
    assert [s["key"] for s in with_steps[0]["steps"]] == ["a", "b"]
    assert with_steps[1]["steps"][0]["status"] == "failed" and with_steps[1]["steps"][0]["error"]

    failed = await api.get("/api/runs", params={"status": "failed"})
    assert failed.status_code == 200
    assert [r["id"] for r in failed.json()] == [bad]
    assert "exploded" in failed.json()[0]["error"]

    by_workflow = (await api.get("/api/runs", params={"workflow": "api-list-ok"})).json()
    assert [r["id"] for r in by_workflow] == [ok2, ok1]
    both = (await api.get("/api/runs", params={"workflow": "api-list-ok", "status": "failed"})).json()
    assert both == []
    assert (await api.get("/api/runs", params={"status": "cancelled"})).json() == []

    first_page = (await api.get("/api/runs", params={"limit": 1})).json()
    second_page = (await api.get("/api/runs", params={"limit": 1, "offset": 1})).json()
    last_page = (await api.get("/api/runs", params={"limit": 2, "offset": 2})).json()
    assert [r["id"] for r in first_page + second_page + last_page] == [ok2, bad, ok1]

    light = (await api.get("/api/runs", params={"include_steps": "false"})).json()  # the default, said
    assert [r["id"] for r in light] == [ok2, bad, ok1]
    assert all(not r.get("steps") for r in light), light
    assert light[0]["status"] == "completed"


async def test_get_run_and_get_one_step(api: httpx.AsyncClient, define: Define) -> None:
    define_sequence(define, "api-get", ["one", "two"])
    run_id = await start(api, "api-get")
    await wait_run(run_id, "completed", "failed")
    run = await get_run(api, run_id)
    assert run["id"] == run_id
    assert run["status"] == "completed"
    r = await api.get(f"/api/runs/{run_id}/steps/two")
    assert r.status_code == 200
    assert r.json() == step_of(run, "two")
    assert r.json()["label"] == "Step TWO"


def test_run_json_is_encoded_to_starlettes_bytes_and_what_orjson_refuses_falls_back() -> None:
    """The API encodes run JSON with orjson: the same bytes as Starlette's encoder (statuses as their text,
    also as keys); a value orjson refuses (an integer past 64 bits, which inputs and outputs are checked
    against but an older version may have stored) takes Starlette's encoder instead of failing."""
    defn = parse_definition({"name": "enc", "steps": [{"key": "a", "call": "tests.stepfns:noop"}]}, "")
    run = created_run_json(7, defn, {"topic": "é ✓", "x": 1.5, "ok": True}, "api@127.0.0.1", datetime.now(UTC))
    assert OrjsonResponse(run).body == JSONResponse(run).body
    beyond = {"n": 2**70, "run": run}
    assert OrjsonResponse(beyond).body == JSONResponse(beyond).body


async def test_logs_stay_a_list_of_lines_and_log_times_give_when_each_was_written(
    api: httpx.AsyncClient, define: Define
) -> None:
    define("api-log-times", [{"key": "t", "call": "tests.stepfns:timed_logs"}])
    run_id = await start(api, "api-log-times")
    assert await wait_run(run_id, "completed", "failed") == "completed"
    run = await get_run(api, run_id)
    step = step_of(run, "t")
    assert step["logs"] == ["first", "second", "third"]  # what scripts read keeps its shape
    times = [datetime.fromisoformat(t) for t in step["log_times"]]
    assert len(times) == 3
    assert all(t.utcoffset() == timedelta(0) for t in times)
    assert times == sorted(times)
    assert times[1] - times[0] >= timedelta(seconds=stepfns.LOG_GAP_S)
    # within the run, to the millisecond the times are kept to
    started, finished = datetime.fromisoformat(run["started_at"]), datetime.fromisoformat(run["finished_at"])
    assert started - timedelta(milliseconds=1) < times[0] and times[-1] <= finished

    r = await api.get(f"/api/runs/{run_id}/steps/t")
    assert r.status_code == 200
    assert (r.json()["logs"], r.json()["log_times"]) == (step["logs"], step["log_times"])
    r = await api.get(f"/api/runs/{run_id}/attempts")
    assert r.status_code == 200
    [attempt] = r.json()
    assert (attempt["logs"], attempt["log_times"]) == (step["logs"], step["log_times"])


# --- acting on runs -------------------------------------------------------------------------------------------


async def test_cancel_stops_a_running_run_and_repeating_it_is_harmless(api: httpx.AsyncClient, define: Define) -> None:
    define_blocked(define, "api-cancel")
    run_id = await start(api, "api-cancel")
    await wait_step(api, run_id, "gate", "running")
    r = await api.post(f"/api/runs/{run_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert step_of(r.json(), "gate")["status"] == "cancelled"
    assert step_of(r.json(), "pick")["status"] == "pending"
    again = await api.post(f"/api/runs/{run_id}/cancel")
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"
    run = await get_run(api, run_id)
    assert run["status"] == "cancelled"
    assert run["finished_at"]
    assert "cancelled by api@127.0.0.1" in run["error"]
    events = (await api.get(f"/api/runs/{run_id}/events", params={"follow": "false"})).json()
    cancels = [e for e in events if e["kind"] == "action" and e["message"] == "cancelled the run"]
    assert [e["actor"] for e in cancels] == [ACTOR]  # the repeated cancel was a no-op


async def test_resume_reruns_the_failed_step_as_attempt_2(api: httpx.AsyncClient, define: Define) -> None:
    define(
        "api-resume",
        [{"key": "flaky", "call": "tests.stepfns:fail_first"}, {"key": "after", "call": "tests.stepfns:use_upstream"}],
    )
    run_id = await start(api, "api-resume")
    assert await wait_run(run_id, "completed", "failed") == "failed"
    failed = await get_run(api, run_id)
    assert "transient failure" in failed["error"]
    assert step_of(failed, "flaky")["error"]
    assert "transient failure" in step_of(failed, "flaky")["error"]

    r = await api.post(f"/api/runs/{run_id}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["status"] in {"queued", "running", "completed"}
    assert await wait_run(run_id, "completed", "failed") == "completed"
    run = await get_run(api, run_id)
    flaky = step_of(run, "flaky")
    assert (flaky["attempt"], flaky["output"], flaky["error"]) == (2, "succeeded on call 2", None)
    assert step_of(run, "after")["output"] == "used:succeeded on call 2"
    assert run["error"] is None


async def test_rerun_plan_lists_what_is_rerun_and_kept(api: httpx.AsyncClient, define: Define) -> None:
    define_sequence(define, "api-plan", ["a", "b", "c"])
    run_id = await start(api, "api-plan")
    await wait_run(run_id, "completed", "failed")
    r = await api.get(f"/api/runs/{run_id}/steps/b/rerun-plan")
    assert r.status_code == 200
    assert r.json() == {
        "run_id": run_id,
        "step": "b",
        "rerun": ["b", "c"],
        "keep": ["a"],
        "allowed": True,
        "reason": None,
    }
    first = (await api.get(f"/api/runs/{run_id}/steps/a/rerun-plan")).json()
    assert (first["rerun"], first["keep"]) == (["a", "b", "c"], [])
    # a preview changes nothing
    assert [s["attempt"] for s in (await get_run(api, run_id))["steps"]] == [1, 1, 1]


async def test_rerun_after_completion_executes_again_as_attempt_2_with_history(
    api: httpx.AsyncClient, define: Define
) -> None:
    define(
        "api-rerun",
        [
            {"key": "gen", "call": "tests.stepfns:alternatives", "alternatives": 2, "select": "auto"},
            {"key": "use", "call": "tests.stepfns:use_upstream"},
        ],
    )
    run_id = await start(api, "api-rerun")
    assert await wait_run(run_id, "completed", "failed") == "completed"
    r = await api.post(f"/api/runs/{run_id}/steps/gen/rerun")
    assert r.status_code == 200, r.text
    assert r.json()["status"] in {"queued", "running", "completed"}
    assert await wait_run(run_id, "completed", "failed") == "completed"
    run = await get_run(api, run_id)
    gen, use = step_of(run, "gen"), step_of(run, "use")
    assert gen["attempt"] == 2
    assert gen["alternatives"] == ["call2-alt0", "call2-alt1"]
    assert use["attempt"] == 2
    assert use["output"] == "used:call2-alt0"
    assert stepfns.CALLS["alternatives"] == 2

    r = await api.get(f"/api/runs/{run_id}/attempts")
    assert r.status_code == 200
    attempts = [(a["step"], a["number"], a["current"], a["status"]) for a in r.json()]
    assert attempts == [
        ("gen", 1, False, "completed"),
        ("gen", 2, True, "completed"),
        ("use", 1, False, "completed"),
        ("use", 2, True, "completed"),
    ]
    old = r.json()[0]
    assert old["outputs"] == ["call1-alt0", "call1-alt1"]
    assert old["selected_index"] == 0
    assert old["started_at"]
    assert old["finished_at"]


async def test_select_completes_a_waiting_step_and_the_run_continues_with_the_choice(
    api: httpx.AsyncClient, define: Define
) -> None:
    define_pick(define, "api-pick")
    run_id = await start(api, "api-pick")
    assert await wait_run(run_id, "waiting", "failed", "completed") == "waiting"
    run = await get_run(api, run_id)
    gen = step_of(run, "gen")
    assert gen["status"] == "waiting"
    assert gen["alternatives"] == ["call1-alt0", "call1-alt1", "call1-alt2"]
    assert (gen["output"], gen["selected_index"], gen["completed_at"] is not None) == (None, None, True)
    assert step_of(run, "use")["status"] == "pending"
    assert run["needs_choice"] == ["gen"]

    r = await api.post(f"/api/runs/{run_id}/steps/gen/select", json={"index": 2})
    assert r.status_code == 200, r.text
    assert step_of(r.json(), "gen")["status"] == "completed"
    assert step_of(r.json(), "gen")["selected_index"] == 2
    assert await wait_run(run_id, "completed", "failed") == "completed"
    run = await get_run(api, run_id)
    assert step_of(run, "gen")["output"] == "call1-alt2"
    assert step_of(run, "use")["output"] == "used:call1-alt2"
    assert run["needs_choice"] == []
    assert stepfns.CALLS["alternatives"] == 1  # selecting never re-executes the step


async def test_events_without_follow_are_the_json_list_in_order_with_actors(
    api: httpx.AsyncClient, define: Define
) -> None:
    define_pick(define, "api-events")
    run_id = await start(api, "api-events")
    await wait_run(run_id, "waiting", "failed")
    r = await api.post(f"/api/runs/{run_id}/steps/gen/select", json={"index": 1})
    assert r.status_code == 200
    await wait_run(run_id, "completed", "failed")

    r = await api.get(f"/api/runs/{run_id}/events", params={"follow": "false"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    events = r.json()
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), ids
    assert all(e["run_id"] == run_id for e in events)
    assert {"run", "step", "action"} <= {e["kind"] for e in events}
    actions = [e for e in events if e["kind"] == "action"]
    assert len(actions) >= 2  # started the run, selected an alternative
    assert all(e["actor"] == ACTOR for e in actions), actions
    # the selection is recorded with who made it (alternatives are numbered from 1 for people)
    assert [(e["step"], e["message"]) for e in actions[1:]] == [("gen", "selected alternative 2")], actions
    runs = [(e["from_status"], e["to_status"]) for e in events if e["kind"] == "run"]
    assert runs[0] == (None, "queued")
    assert runs[-1][1] == "completed"
    assert ("running", "waiting") in runs
    gen = [(e["attempt"], e["to_status"]) for e in events if e["kind"] == "step" and e["step"] == "gen"]
    assert gen == [(1, "running"), (1, "waiting"), (1, "completed")]

    after = (await api.get(f"/api/runs/{run_id}/events", params={"follow": "false", "after": ids[2]})).json()
    assert [e["id"] for e in after] == ids[3:]
    resumed = await api.get(
        f"/api/runs/{run_id}/events", params={"follow": "false"}, headers={"Last-Event-ID": str(ids[-2])}
    )
    assert [e["id"] for e in resumed.json()] == ids[-1:]

    # The same replay as Server-Sent Events when the client asks for them (the stream then closes).
    sse = await api.get(
        f"/api/runs/{run_id}/events", params={"follow": "false"}, headers={"Accept": "text/event-stream"}
    )
    assert sse.status_code == 200
    assert sse.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in sse.text.split("\n\n") if f.strip()]
    assert [int(f.split("\n")[0].removeprefix("id: ")) for f in frames] == ids
    first = frames[0].split("\n")
    assert first[1] == f"event: {events[0]['kind']}"
    assert json.loads(first[2].removeprefix("data: ")) == events[0]


# --- bad input: JSON 4xx, never a 500 --------------------------------------------------------------------


RUN_ROUTES = [
    ("GET", "/api/runs/{id}"),
    ("GET", "/api/runs/{id}/attempts"),
    ("GET", "/api/runs/{id}/events?follow=false"),
    ("POST", "/api/runs/{id}/cancel"),
    ("POST", "/api/runs/{id}/resume"),
    ("GET", "/api/runs/{id}/steps/a/rerun-plan"),
    ("POST", "/api/runs/{id}/steps/a/rerun"),
    ("POST", "/api/runs/{id}/steps/a/select"),
    ("GET", "/api/runs/{id}/steps/a"),
]


@pytest.mark.parametrize("run_id", ["does-not-exist", "999999", "-1", "0", "1.5", "99999999999999999999999"])
@pytest.mark.parametrize(("method", "route"), RUN_ROUTES)
async def test_unknown_run_is_a_404_naming_it(api: httpx.AsyncClient, method: str, route: str, run_id: str) -> None:
    body = {"index": 0} if route.endswith("select") else None
    r = await api.request(method, route.format(id=run_id), json=body)
    error_of(r, 404, run_id)


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("GET", "/api/runs/{id}/steps/nope/rerun-plan"),
        ("POST", "/api/runs/{id}/steps/nope/rerun"),
        ("POST", "/api/runs/{id}/steps/nope/select"),
        ("GET", "/api/runs/{id}/steps/nope"),
    ],
)
async def test_unknown_step_is_a_404_naming_it(api: httpx.AsyncClient, define: Define, method: str, route: str) -> None:
    define_sequence(define, "api-nostep", ["a"])
    run_id = await start(api, "api-nostep")
    await wait_run(run_id, "completed", "failed")
    body = {"index": 0} if route.endswith("select") else None
    error_of(await api.request(method, route.format(id=run_id), json=body), 404, "nope")


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"index": 3}, 422, ["3", "range"]),
        ({"index": 99}, 422, ["99"]),
        ({"index": -1}, 422, ["-1"]),
        ({"index": "x"}, 422, ["index"]),
        ({"index": True}, 422, ["index"]),
        ({"index": 1.5}, 422, ["index"]),
        ({"index": None}, 422, ["index"]),
        ({}, 422, ["index"]),
        ({"index": 0, "why": "because"}, 422, ["why"]),
        ([0], 422, []),
    ],
)
async def test_select_with_a_bad_index_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, define: Define, body: Any, status: int, named: list[str]
) -> None:
    define_pick(define, "api-badindex")
    run_id = await start(api, "api-badindex")
    await wait_run(run_id, "waiting", "failed")
    error_of(await api.post(f"/api/runs/{run_id}/steps/gen/select", json=body), status, *named)
    run = await get_run(api, run_id)
    assert (run["status"], step_of(run, "gen")["status"], step_of(run, "gen")["selected_index"]) == (
        "waiting",
        "waiting",
        None,
    )


async def test_select_with_a_body_that_is_not_json_is_a_400(api: httpx.AsyncClient, define: Define) -> None:
    define_pick(define, "api-badjson")
    run_id = await start(api, "api-badjson")
    await wait_run(run_id, "waiting", "failed")
    r = await api.post(
        f"/api/runs/{run_id}/steps/gen/select", content=b"{index: 1", headers={"Content-Type": "application/json"}
    )
    error_of(r, 400, "JSON")


@pytest.mark.parametrize(
    ("content", "status", "named"),
    [
        (b'{"workflow": "api-start", "inputs": {', 400, ["JSON"]),
        (b"not json at all", 400, ["JSON"]),
        (b"[]", 422, []),
        (b'"api-start"', 422, []),
        (b"42", 422, []),
        (b"{}", 422, ["workflow"]),
        (b'{"inputs": {"topic": "x"}}', 422, ["workflow"]),
        (b'{"workflow": ""}', 422, ["workflow"]),
        (b'{"workflow": 7}', 422, ["workflow"]),
        (b'{"workflow": "api-start", "inputs": ["topic"]}', 422, ["inputs"]),
        (b'{"workflow": "api-start", "inputs": {"topic": "x"}, "priority": 1}', 422, ["priority"]),
    ],
)
async def test_post_run_with_a_malformed_body_is_refused(
    api: httpx.AsyncClient, define: Define, content: bytes, status: int, named: list[str]
) -> None:
    define("api-start", [{"key": "a", "call": "tests.stepfns:noop"}], inputs={"topic": {"type": "string"}})
    r = await api.post("/api/runs", content=content, headers={"Content-Type": "application/json"})
    error_of(r, status, *named)
    assert (await api.get("/api/runs")).json() == []


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({}, ["topic", "required"]),
        ({"words": 3}, ["topic"]),
        ({"topic": 5}, ["topic", "string"]),
        ({"topic": "x", "words": "many"}, ["words", "integer"]),
        ({"topic": "x", "words": True}, ["words"]),
        ({"topic": "x", "words": 2.5}, ["words"]),
        ({"topic": "x", "colour": "red"}, ["colour", "unknown"]),
        ({"topic": "x", "tone": "grumpy"}, ["tone", "grumpy"]),
    ],
)
async def test_post_run_with_bad_inputs_is_a_422_naming_the_input(
    api: httpx.AsyncClient, define: Define, inputs: dict[str, Any], named: list[str]
) -> None:
    define(
        "api-inputs",
        [{"key": "a", "call": "tests.stepfns:noop"}],
        inputs={
            "topic": {"type": "string"},
            "words": {"type": "integer", "default": 10},
            "tone": {"type": "choice", "options": ["calm", "loud"], "default": "calm"},
        },
    )
    body = error_of(await api.post("/api/runs", json={"workflow": "api-inputs", "inputs": inputs}), 422, *named)
    assert named[0] in body["problems"], body
    assert (await api.get("/api/runs")).json() == []


async def test_post_run_of_an_unknown_workflow_is_a_404_naming_it(api: httpx.AsyncClient) -> None:
    error_of(await api.post("/api/runs", json={"workflow": "nope-flow", "inputs": {}}), 404, "nope-flow")


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"status": "bogus"}, ["status"]),
        ({"status": "RUNNING"}, ["status"]),
        ({"limit": "0"}, ["limit"]),
        ({"limit": "100000"}, ["limit"]),
        ({"limit": "ten"}, ["limit"]),
        ({"offset": "-1"}, ["offset"]),
        ({"include_steps": "maybe"}, ["include_steps"]),
    ],
)
async def test_list_runs_with_bad_query_parameters_is_a_422(
    api: httpx.AsyncClient, params: dict[str, str], named: list[str]
) -> None:
    error_of(await api.get("/api/runs", params=params), 422, *named)


@pytest.mark.parametrize("last_event_id", ["abc", "-5", "1.5", "", "0x10"])
async def test_events_with_a_bad_last_event_id_are_refused(
    api: httpx.AsyncClient, define: Define, last_event_id: str
) -> None:
    define_sequence(define, "api-lei", ["a"])
    run_id = await start(api, "api-lei")
    await wait_run(run_id, "completed", "failed")
    r = await api.get(
        f"/api/runs/{run_id}/events", params={"follow": "false"}, headers={"Last-Event-ID": last_event_id}
    )
    assert 400 <= r.status_code < 500, r.text
    error_of(r, r.status_code, "Last-Event-ID")


async def test_events_after_an_impossibly_large_last_event_id_are_empty_or_refused(
    api: httpx.AsyncClient, define: Define
) -> None:
    define_sequence(define, "api-lei-huge", ["a"])
    run_id = await start(api, "api-lei-huge")
    await wait_run(run_id, "completed", "failed")
    for huge in ("9" * 19, "9" * 40):
        r = await api.get(f"/api/runs/{run_id}/events", params={"follow": "false"}, headers={"Last-Event-ID": huge})
        if r.status_code == 200:
            assert r.json() == [], r.text  # nothing comes after an id beyond every event
        else:
            error_of(r, r.status_code, "Last-Event-ID")
            assert 400 <= r.status_code < 500


@pytest.mark.parametrize("after", ["-1", "x", str(2**63)])
async def test_events_with_a_bad_after_parameter_are_a_422(api: httpx.AsyncClient, define: Define, after: str) -> None:
    define_sequence(define, "api-after", ["a"])
    run_id = await start(api, "api-after")
    await wait_run(run_id, "completed", "failed")
    error_of(await api.get(f"/api/runs/{run_id}/events", params={"follow": "false", "after": after}), 422, "after")


async def test_acting_on_a_running_run_is_a_409_and_changes_nothing(api: httpx.AsyncClient, define: Define) -> None:
    define_blocked(define, "api-busy")
    run_id = await start(api, "api-busy")
    await wait_step(api, run_id, "gate", "running")

    error_of(await api.post(f"/api/runs/{run_id}/steps/gate/rerun"), 409, "running")
    error_of(await api.post(f"/api/runs/{run_id}/steps/pick/rerun"), 409, "running")
    error_of(await api.post(f"/api/runs/{run_id}/resume"), 409, str(run_id))
    error_of(await api.post(f"/api/runs/{run_id}/steps/gate/select", json={"index": 0}), 409, "gate", "running")
    error_of(await api.post(f"/api/runs/{run_id}/steps/pick/select", json={"index": 0}), 409, "pick", "pending")
    plan = (await api.get(f"/api/runs/{run_id}/steps/gate/rerun-plan")).json()
    assert plan["allowed"] is False
    assert "running" in plan["reason"]

    run = await get_run(api, run_id)
    assert run["status"] == "running"
    assert [(s["key"], s["status"], s["attempt"]) for s in run["steps"]] == [
        ("gate", "running", 1),
        ("pick", "pending", 0),
    ]
    stepfns.RELEASE.set()
    assert await wait_run(run_id, "waiting", "failed") == "waiting"
    assert stepfns.CALLS["blocking"] == 1


async def test_cancel_of_a_completed_run_is_a_409(api: httpx.AsyncClient, define: Define) -> None:
    define_sequence(define, "api-cancel-done", ["a"])
    run_id = await start(api, "api-cancel-done")
    assert await wait_run(run_id, "completed", "failed") == "completed"
    error_of(await api.post(f"/api/runs/{run_id}/cancel"), 409, str(run_id), "completed")
    assert (await get_run(api, run_id))["status"] == "completed"


async def test_resume_of_a_completed_run_is_a_409(api: httpx.AsyncClient, define: Define) -> None:
    define_sequence(define, "api-resume-done", ["a"])
    run_id = await start(api, "api-resume-done")
    assert await wait_run(run_id, "completed", "failed") == "completed"
    error_of(await api.post(f"/api/runs/{run_id}/resume"), 409, str(run_id))


async def test_unknown_api_route_and_wrong_method_answer_json(api: httpx.AsyncClient) -> None:
    error_of(await api.get("/api/nothing-here"), 404)
    error_of(await api.delete("/api/runs"), 405)
    error_of(await api.get("/api/runs/1/cancel"), 405)


async def test_the_openapi_document_describes_every_route(api: httpx.AsyncClient) -> None:
    r = await api.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert set(paths["/api/runs"]) == {"get", "post"}
    for path in (
        "/api/health",
        "/api/workflows",
        "/api/workflows/{name}",
        "/api/workflows/errors",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/resume",
        "/api/runs/{run_id}/steps/{key}/rerun-plan",
        "/api/runs/{run_id}/steps/{key}/rerun",
        "/api/runs/{run_id}/steps/{key}/select",
        "/api/runs/{run_id}/attempts",
        "/api/runs/{run_id}/events",
    ):
        assert path in paths, path
    assert "404" in paths["/api/runs/{run_id}"]["get"]["responses"]


@pytest.mark.parametrize("path", ["/api/runs/%C2%B2", "/api/runs/%D9%A3"])  # '²' and Arabic-Indic '3' are digits too
async def test_run_ids_that_only_look_like_digits_are_404s(api: httpx.AsyncClient, path: str) -> None:
    response = await api.get(path)
    assert response.status_code == 404
    assert "does not exist" in response.json()["message"]


async def test_inputs_with_a_lone_surrogate_are_refused_with_a_message(api: httpx.AsyncClient, define: Define) -> None:
    define("echo-surrogate", [{"key": "a", "call": "tests.stepfns:echo_inputs"}], inputs={"topic": "string"})
    body = '{"workflow": "echo-surrogate", "inputs": {"topic": "bad \\ud800 text"}}'
    response = await api.post("/api/runs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "topic" in response.json()["message"]
    unknown = '{"workflow": "echo-surrogate", "inputs": {"\\ud800": "x"}}'
    response = await api.post("/api/runs", content=unknown, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert (await api.get("/api/runs?workflow=echo-surrogate")).json() == []


async def test_the_runs_list_stays_small_whatever_the_steps_produced_or_logged(
    api: httpx.AsyncClient, define: Define
) -> None:
    define("api-verbose", [{"key": "talk", "call": "tests.stepfns:verbose"}])
    run_ids = [await start(api, "api-verbose") for _ in range(3)]
    for run_id in run_ids:
        await wait_run(run_id, "completed", "failed")
    detail = await api.get(f"/api/runs/{run_ids[0]}")
    assert len(detail.content) > 400_000  # the run itself has it all
    for params in ({}, {"include_steps": "true"}):
        listed = await api.get("/api/runs", params=params)
        assert listed.status_code == 200
        assert len(listed.content) < 10_000, (params, len(listed.content))
        assert [r["progress"] for r in listed.json()] == [{"completed": 1, "total": 1}] * 3


async def test_ids_beyond_32_bits_find_nothing_rather_than_fail(api: httpx.AsyncClient, define: Define) -> None:
    define_sequence(define, "api-wide", ["a"])
    run_id = await start(api, "api-wide")
    await wait_run(run_id, "completed", "failed")
    wide = 26_309_712_375  # more than a 32-bit integer column holds
    after = await api.get(f"/api/runs/{run_id}/events", params={"follow": "false", "after": wide})
    assert (after.status_code, after.json()) == (200, [])
    resumed = await api.get(
        f"/api/runs/{run_id}/events", params={"follow": "false"}, headers={"Last-Event-ID": str(wide)}
    )
    assert (resumed.status_code, resumed.json()) == (200, [])
    assert (await api.get(f"/api/runs/{wide}")).status_code == 404
