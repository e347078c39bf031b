"""The fault suite: real servers killed, raced and robbed of their database file, with `check` clean
after each. Kept to a few cycles: each fault is deterministic, the cycles vary only its timing."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.served import Server, Workspace, serving

WORK = """
name: work
steps:
  - key: a
    call: faultsteps:nap
  - key: b
    call: faultsteps:nap
  - key: c
    call: faultsteps:nap
"""

MODULE = """
import asyncio


async def nap(ctx):
    await asyncio.sleep(0.05)
    return "ok"
"""


def _wait(what: str, check: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_database_file_removed_or_replaced_while_serving_stops_new_work_loudly(tmp_path: Path, how: str) -> None:
    ws = Workspace(tmp_path, workflows={"work": WORK}, modules={"faultsteps": MODULE})
    with serving(ws) as server:
        server.wait_run(server.start_run("work"), "completed")
        if how == "removed":
            for path in tmp_path.glob("stepdeck.db*"):
                path.unlink()
        else:
            shutil.copy(ws.db_path, tmp_path / "copy.db")
            (tmp_path / "copy.db").replace(ws.db_path)  # same content, another file

        def refused() -> bool:
            r = server.client.post("/api/runs", json={"workflow": "work", "inputs": {}})
            assert r.status_code in (201, 503), r.text
            return r.status_code == 503

        _wait("new runs to be refused", refused)
        r = server.client.post("/api/runs", json={"workflow": "work", "inputs": {}})
        assert r.json()["error"] == "storage"
        assert f"was {how}" in r.json()["message"]
        health = server.client.get("/api/health")
        assert health.status_code == 503
        assert health.json()["status"] == "database lost"
        assert "CRITICAL" in server.log_text()
