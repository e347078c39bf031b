"""Hostile definition files, inputs and outputs against a real server: each is refused or recorded
with a reason, and every page of the API keeps answering JSON. Real processes, real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from engine.db import current
from engine.db.postgres import PostgresDatabase
from engine.db.sqlite import SqliteDatabase
from tests.integration.served import Workspace, serving

GOOD = """
name: good
inputs:
  n: {type: integer, required: false}
  j: {type: json, required: false}
steps:
  - key: a
    call: hostile:echo
"""

HOSTILE_STEPS = """
name: hostile-outputs
inputs:
  what: {type: choice, options: [huge, deep]}
steps:
  - key: a
    call: hostile:produce
"""

MODULE = """
def echo(ctx):
    return dict(ctx.inputs)


def produce(ctx):
    if ctx.inputs["what"] == "huge":
        return {"n": 2**200}
    value = 0
    for _ in range(300):
        value = [value]
    return value
"""


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _laughs() -> str:
    anchors = ["x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    anchors += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return (
        "\n".join(anchors) + "\ninputs:\n  x: {type: json, default: *x9}\nsteps:\n  - key: a\n    call: hostile:echo\n"
    )


def _forward_chain(n: int) -> str:
    steps = [f"  - key: s{i}\n    call: hostile:echo\n    needs: [s{i + 1}]\n" for i in range(n - 1)]
    return "steps:\n" + "".join(steps) + f"  - key: s{n - 1}\n    call: hostile:echo\n    needs: []\n"


def test_hostile_definition_files_never_stop_the_server_or_a_reload(tmp_path: Path) -> None:
    deep = f"inputs:\n  x: {{type: json, default: {_deep(20_000)}}}\nsteps:\n  - key: a\n    call: hostile:echo\n"
    ws = Workspace(
        tmp_path,
        workflows={"good": GOOD, "deep": deep, "laughs": _laughs(), "chain": _forward_chain(1000)},
        modules={"hostile": MODULE},
    )
    with serving(ws) as server:
        names = [w["name"] for w in server.client.get("/api/workflows").json()]
        assert {"good", "chain"} <= set(names)
        errors = {Path(e["source"]).stem: e["message"] for e in server.client.get("/api/workflows/errors").json()}
        assert set(errors) == {"deep", "laughs"}, errors
        assert "nested more than" in errors["deep"]
        assert "aliases are expanded" in errors["laughs"]

        assert ws.workflows_dir is not None
        cycle = [f"  - key: s{i}\n    call: hostile:echo\n    needs: [s{(i + 1) % 1000}]\n" for i in range(1000)]
        (ws.workflows_dir / "cycle.yaml").write_text("steps:\n" + "".join(cycle))
        (ws.workflows_dir / "later.yaml").write_text(GOOD.replace("name: good", "name: later"))
        reloaded = server.client.post("/api/workflows/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert {"good", "chain", "later"} <= set(reloaded.json()["workflows"])
        assert len(reloaded.json()["errors"]) == 3
        assert server.client.get("/api/health").status_code == 200
        # The server's watcher re-reads the directory when a file changes, hostile files included.
        (ws.workflows_dir / "deep2.yaml").write_text(deep)
        (ws.workflows_dir / "watched.yaml").write_text(GOOD.replace("name: good", "name: watched"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if "watched" in [w["name"] for w in server.client.get("/api/workflows").json()]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the watcher stopped re-reading the definitions")
        # The 1,000-step chain runs to the end.
        run_id = server.start_run("chain")
        assert server.wait_run(run_id, "completed", "failed", timeout_s=120)["status"] == "completed"


def test_out_of_range_inputs_and_outputs_are_refused_and_reads_stay_whole(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, workflows={"good": GOOD, "outputs": HOSTILE_STEPS}, modules={"hostile": MODULE})
    with serving(ws) as server:
        for inputs in ({"n": 18446744073709551616}, {"j": json.loads(_deep(300))}):
            r = server.client.post("/api/runs", json={"workflow": "good", "inputs": inputs})
            assert r.status_code == 422, r.text
            assert r.json()["error"] == "invalid"
        body = '{"workflow": "good", "inputs": {"j": ' + _deep(20_000) + "}}"
        r = server.client.post("/api/runs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422), r.text
        assert r.headers["content-type"].startswith("application/json")
        assert ws.run_count() == 0

        for what, reason in (("huge", "beyond the 64-bit range"), ("deep", "nested more than")):
            run = server.wait_run(server.start_run("hostile-outputs", {"what": what}), "failed")
            assert reason in run["steps"][0]["error"], run["steps"][0]

        # Values an older version stored without these checks: every read still answers.
        good = server.wait_run(server.start_run("good", {"n": 1}), "completed")
        ws.sql(
            "UPDATE runs SET inputs = ? WHERE id = ?",
            (json.dumps({"n": 2**200, "j": json.loads(_deep(300))}), good["id"]),
        )
        ws.sql("UPDATE attempts SET outputs = ? WHERE run_id = ?", (json.dumps([json.loads(_deep(400))]), good["id"]))
        detail = server.run(good["id"])
        assert detail["inputs"]["n"] == str(2**200)
        assert server.client.get("/api/runs").status_code == 200
        assert server.client.get("/api/runs", params={"steps": "true"}).status_code == 200
        assert server.client.get(f"/api/runs/{good['id']}/attempts").status_code == 200
        assert server.client.get(f"/runs/{good['id']}").status_code == 200

    done = ws.cli("run", "good", "-i", "n=99999999999999999999999")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "beyond the 64-bit range" in done.stderr
    assert "Traceback" not in done.stderr
    assert ws.cli("check").returncode == 0


def test_unknown_api_paths_answer_json(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, workflows={"good": GOOD}, modules={"hostile": MODULE})
    with serving(ws) as server:
        for path in ("/api/nope", "/api/..%2f..%2fetc%2fpasswd", "/api/runs/1/%2e%2e/%2e%2e/x", "/api/runs/99999"):
            r = server.client.get(path)
            assert r.status_code == 404, (path, r.status_code)
            assert r.headers["content-type"].startswith("application/json"), (path, r.text[:200])
            assert r.json()["error"] == "not_found"


async def test_a_database_refusing_writes_gives_a_json_503_with_the_reason(
    api: httpx.AsyncClient, define: Callable[..., Any]
) -> None:
    define("w", [{"key": "a", "call": "tests.stepfns:noop"}])
    database = current()
    # The database's own refusal: SQLite's "attempt to write a readonly database", PostgreSQL's "cannot
    # execute INSERT in a read-only transaction".

    def refuse(on: bool) -> None:
        if isinstance(database, PostgresDatabase):
            database.refuse_writes(on)
        else:
            assert isinstance(database, SqliteDatabase)
            database.pragma("query_only", "ON" if on else "OFF")

    refuse(True)
    try:
        r = await api.post("/api/runs", json={"workflow": "w", "inputs": {}})
    finally:
        refuse(False)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "storage"
    assert "readonly" in r.json()["message"] or "read-only" in r.json()["message"]
    assert (await api.get("/api/runs")).json() == []
