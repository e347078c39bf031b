"""Event streams resumed with Last-Event-ID on PostgreSQL, where event ids are not in commit order (a
transaction can commit after another that took a later id): a client that keeps reconnecting gets every
event of its run once, none lost, none twice."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from engine import operations, queries
from engine.engine import Engine
from engine.registry import Registry
from models.schema import dsn
from tests.conftest import wait_run
from tests.integration.served import Server, Workspace

RUNS = 60
BRANCHES = 8

WORKFLOWS = {
    "fan": "steps:\n"
    + "".join(f'  - key: b{i}\n    call: "steps:quick"\n    needs: []\n' for i in range(BRANCHES))
    + '  - key: join\n    call: "steps:quick"\n    needs: ['
    + ", ".join(f"b{i}" for i in range(BRANCHES))
    + "]\n",
}
STEPS = """
def quick(ctx):
    return ctx.step_key
"""
TERMINAL = {"completed", "failed", "cancelled"}


async def read_stream(
    client: httpx.AsyncClient, run_id: int, last: str | None, *, follow: bool, most: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Events of one connection (at most `most`, then the client hangs up); and the last id it got."""
    headers = {"Accept": "text/event-stream"}
    if last is not None:
        headers["Last-Event-ID"] = last
    got: list[dict[str, Any]] = []
    event_id: str | None = None
    params = {} if follow else {"follow": "false"}
    async with client.stream("GET", f"/api/runs/{run_id}/events", headers=headers, params=params) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event_id = line[len("id: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
                if data["id"] is None:
                    continue  # progress, log lines: not resumable
                assert str(data["id"]) == event_id
                got.append(data)
                last = event_id
                if len(got) >= most or (data["kind"] == "run" and data["to_status"] in TERMINAL):
                    break
    return got, last


async def follow_with_reconnects(base_url: str, run_id: int, seed: int) -> list[dict[str, Any]]:
    """Read the run's events in many short connections, each resuming where the last one stopped."""
    rng = random.Random(seed)
    delivered: list[dict[str, Any]] = []
    last: str | None = None
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(120.0)) as client:
        while not any(e["kind"] == "run" and e["to_status"] in TERMINAL for e in delivered):
            got, last = await read_stream(client, run_id, last, follow=True, most=rng.randint(1, 3))
            delivered += got
        # The run is over: whatever came after its last event, without following.
        got, last = await read_stream(client, run_id, last, follow=False, most=10_000)
        delivered += got
    return delivered


@pytest.mark.timeout(600)
def test_60_runs_followed_with_reconnects_deliver_every_event_once(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, WORKFLOWS, {"steps": STEPS})
    dashboard = Server(ws, extra_args=["--no-engine"], log_name="dashboard.log")
    engines = [Server(ws, log_name=f"engine{i}.log") for i in range(2)]
    try:
        dashboard.start()
        for engine in engines:
            engine.start()
        run_ids = [dashboard.start_run("fan") for _ in range(RUNS)]

        # Followed on every process: where the run executes (its own commits reach its hub in the order its
        # writers commit) and on the dashboard (they come through the database).
        servers = [dashboard, *engines]

        async def everyone() -> list[list[dict[str, Any]]]:
            return await asyncio.gather(
                *(
                    follow_with_reconnects(servers[seed % len(servers)].base_url, run_id, seed)
                    for seed, run_id in enumerate(run_ids)
                )
            )

        streams = asyncio.run(asyncio.wait_for(everyone(), 600))
        lost: dict[int, list[int]] = {}
        twice: dict[int, list[int]] = {}
        for run_id, delivered in zip(run_ids, streams, strict=True):
            ids = [e["id"] for e in delivered]
            table = [r["id"] for r in ws.sql("SELECT id FROM events WHERE run_id = ? ORDER BY id", (run_id,))]
            if set(table) - set(ids):
                lost[run_id] = sorted(set(table) - set(ids))
            if len(ids) != len(set(ids)):
                twice[run_id] = sorted({i for i in ids if ids.count(i) > 1})
            assert set(ids) <= set(table)
        assert lost == {} and twice == {}, f"lost: {lost}, delivered twice: {twice}"
        assert all(r["status"] == "completed" for r in (dashboard.run(i) for i in run_ids))
    except BaseException:
        for server in (dashboard, *engines):
            print(f"--- {server.log_path.name} ---\n{server.log_tail(60)}")
        raise
    finally:
        dashboard.close()
        for engine in engines:
            engine.close()


async def test_an_event_committed_after_a_later_one_is_sent_before_it_and_a_resume_misses_neither(
    db: str, engine: Engine, define: Callable[..., Any], api: httpx.AsyncClient, registry: Registry
) -> None:
    define("one", [{"key": "a", "call": "tests.stepfns:noop"}])
    run_id = await operations.start_run(registry.get("one"), {}, "t")
    await wait_run(run_id, "completed")
    before = [e["id"] for e in await queries.events_after(run_id)]
    insert = "INSERT INTO events (run_id, kind, actor, created_at) VALUES ($1, 'action', $2, now()) RETURNING id"
    slow, quick = await asyncpg.connect(dsn(db)), await asyncpg.connect(dsn(db))
    try:
        held = slow.transaction()
        await held.start()
        late = await slow.fetchval(insert, run_id, "late")  # takes an id first, commits last
        early = await quick.fetchval(insert, run_id, "early")
        assert early > late
        # While the older transaction is open, a stream stops before the event committed after it began
        # (sent now, a client resuming after it would never get the older one).
        seen, more = await queries.events_committed_after(run_id, await queries.event_cursor(run_id, before[-1]))
        assert (seen, more) == ([], True)
        first = await sse_ids(api, run_id, None)
        assert first == before
        await held.commit()
    finally:
        await slow.close()
        await quick.close()
    assert await sse_ids(api, run_id, str(first[-1])) == [late, early]  # the resume of that client
    assert await sse_ids(api, run_id, None) == [*before, late, early]  # commit order, each once
    assert await sse_ids(api, run_id, str(before[-1])) == [late, early]
    assert await sse_ids(api, run_id, str(late)) == [early]
    assert await sse_ids(api, run_id, str(early)) == []


async def sse_ids(api: httpx.AsyncClient, run_id: int, last: str | None) -> list[int]:
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
    r = await api.get(f"/api/runs/{run_id}/events", params={"follow": "false"}, headers=headers)
    assert r.status_code == 200, r.text
    return [int(line[len("id: ") :]) for line in r.text.splitlines() if line.startswith("id: ")]
