"""Ids are 64-bit on PostgreSQL: a database whose ids have passed 2^31 keeps running workflows, and every
id is stored and read back whole (by the engine, the queries and the API)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from engine import operations, queries
from engine.engine import Engine
from engine.registry import Registry
from engine.store import Stmt, fetch, run_batch
from tests.conftest import wait_run

PAST_32_BITS = 2**31 + 7
SEQUENCES = ("runs", "steps", "attempts", "events", "notifications", "deliveries")


async def test_ids_past_two_to_the_31_are_stored_and_read_back(
    db: str, engine: Engine, api: httpx.AsyncClient, define: Callable[..., Any], registry: Registry
) -> None:
    for table in SEQUENCES:  # refused ("out of bounds") by a 32-bit sequence
        await run_batch([Stmt(f"SELECT setval('{table}_id_seq', ?)", (PAST_32_BITS + SEQUENCES.index(table),))])
    define(
        "wide", [{"key": "a", "call": "tests.stepfns:noop"}, {"key": "b", "call": "tests.stepfns:noop", "needs": ["a"]}]
    )

    run_id = await operations.start_run(registry.get("wide"), {}, "t")
    assert run_id == PAST_32_BITS + 1
    assert await wait_run(run_id, "completed") == "completed"

    detail = (await queries.run_detail(run_id)).to_json()
    assert detail["id"] == run_id
    assert [s["status"] for s in detail["steps"]] == ["completed", "completed"]
    rows = await fetch(
        "SELECT s.id AS step_id, a.id AS attempt_id, a.step_id AS attempt_step, a.run_id FROM steps s"
        " JOIN attempts a ON a.step_id = s.id WHERE s.run_id = ? ORDER BY s.position",
        (run_id,),
    )
    assert [r["step_id"] for r in rows] == [PAST_32_BITS + 2, PAST_32_BITS + 3]
    assert [r["attempt_id"] for r in rows] == [PAST_32_BITS + 3, PAST_32_BITS + 4]
    assert all(r["attempt_step"] == r["step_id"] and r["run_id"] == run_id for r in rows)
    events = await queries.events_after(run_id)
    assert events and all(e["id"] > 2**31 for e in events)

    body = (await api.get(f"/api/runs/{run_id}")).json()
    assert body["id"] == run_id and body["status"] == "completed"
    resumed = await queries.events_after(run_id, events[0]["id"])
    assert [e["id"] for e in resumed] == [e["id"] for e in events[1:]]
