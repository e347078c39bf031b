"""The engine runs a workflow from queued to completed through real SQLite."""

from collections.abc import Callable
from typing import Any

from engine import queries
from engine.engine import Engine
from engine.registry import Registry
from tests.conftest import run_to_end, wait_run


async def test_linear_run_completes_with_outputs_passed_downstream(
    engine: Engine, define: Callable[..., Any], registry: Registry
) -> None:
    define(
        "lin",
        [
            {"key": "gen", "call": "tests.stepfns:alternatives", "alternatives": 2, "select": "auto"},
            {"key": "use", "call": "tests.stepfns:use_upstream"},
        ],
    )
    run_id = await run_to_end(registry.get("lin"), "completed")
    run = (await queries.run_detail(run_id)).to_json()
    assert [s["key"] for s in run["steps"]] == ["gen", "use"]
    assert run["steps"][0]["alternatives"] == ["call1-alt0", "call1-alt1"]
    assert run["steps"][0]["selected_index"] == 0
    assert run["steps"][1]["output"] == "used:call1-alt0"


async def test_api_starts_a_run_and_reports_unknown_workflow(api: Any, define: Callable[..., Any]) -> None:
    define("one", [{"key": "a", "call": "tests.stepfns:noop"}])
    response = await api.post("/api/runs", json={"workflow": "one", "inputs": {}})
    assert response.status_code == 201
    run_id = response.json()["id"]
    assert await wait_run(run_id, "completed", "failed") == "completed"
    missing = await api.post("/api/runs", json={"workflow": "nope", "inputs": {}})
    assert missing.status_code == 404
    assert "unknown workflow 'nope'" in missing.json()["message"]
