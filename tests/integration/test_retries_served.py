"""Pending retries survive real process deaths: kill -9 while a retry waits, then restart; and many
flaky runs through repeated kills under the `resume` policy. Each test ends with `main.py check`."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.integration.served import Server, Workspace

STEPS = '''
import pathlib


def flaky(ctx):
    """Fails `inputs.failures` times per run and step (counted in a file: the server is another process)."""
    path = pathlib.Path(ctx.inputs["dir"]) / f"calls-{ctx.run_id}-{ctx.step_key}"
    with open(path, "a") as f:
        f.write(f"{ctx.attempt}\\n")
    n = len(path.read_text().split())
    if n <= int(ctx.inputs["failures"]):
        raise RuntimeError(f"transient failure {n}")
    return f"ok after {n} calls"


def quick(ctx):
    return "done"
'''

WORKFLOWS = {
    "flaky": """
        name: flaky
        inputs:
          dir: string
          failures: integer
        retries: 2
        retry_delay_s: 2
        steps:
          - key: fetch
            call: retrysteps:flaky
          - key: after
            call: retrysteps:quick
        """,
}
FAST = {
    "STEPDECK_HEARTBEAT_INTERVAL_S": "0.3",
    "STEPDECK_STALE_AFTER_S": "3",
    "STEPDECK_SWEEP_INTERVAL_S": "1",
    "STEPDECK_POLL_INTERVAL_S": "0.2",
}


def poll(what: str, probe: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s (last seen: {last!r})")


def step(server: Server, run_id: int, key: str) -> dict[str, Any]:
    return next(s for s in server.run(run_id)["steps"] if s["key"] == key)


def attempts(server: Server, run_id: int, key: str) -> list[dict[str, Any]]:
    r = server.client.get(f"/api/runs/{run_id}/attempts")
    assert r.status_code == 200, r.text
    return [a for a in r.json() if a["step"] == key]


def check_clean(ws: Workspace) -> None:
    check = ws.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no problems found" in check.stdout, check.stdout


def test_kill_9_during_a_pending_retry_then_restart_fires_it_and_the_run_completes(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws", WORKFLOWS, {"retrysteps": STEPS}, env=FAST)
    first = Server(ws, log_name="first.log")
    second = Server(ws, log_name="second.log")
    try:
        first.start()
        run_id = first.start_run("flaky", {"dir": str(tmp_path), "failures": 1})
        pending = poll("a pending retry", lambda: (s := step(first, run_id, "fetch"))["status"] == "retrying" and s, 30)
        assert first.run(run_id)["status"] == "running"
        assert pending["retry_at"] is not None and pending["attempt"] == 1
        first.stop(signal.SIGKILL)

        second.start()
        run = second.wait_run(run_id, "completed", "failed", "cancelled", timeout_s=60)
        assert run["status"] == "completed", run
        tries = attempts(second, run_id, "fetch")
        assert [a["status"] for a in tries] == ["failed", "completed"]
        # It fired at its due time, or later (the restart may take longer than the delay): never before.
        assert datetime.fromisoformat(tries[1]["started_at"]) >= datetime.fromisoformat(pending["retry_at"])
        assert run["recoveries"] == 0  # nothing was interrupted: no recovery counted
        r = second.client.get(f"/api/runs/{run_id}/events", params={"follow": "false"})
        assert any("re-queued with its pending retry" in (e["message"] or "") for e in r.json())
        assert second.stop(signal.SIGTERM) is not None
    finally:
        first.close()
        second.close()
    check_clean(ws)


def test_twenty_flaky_runs_through_kills_under_resume_leave_no_orphan(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws", WORKFLOWS, {"retrysteps": STEPS}, env={**FAST, "STEPDECK_ON_ORPHAN": "resume"})
    servers = [Server(ws, log_name=f"server{i}.log") for i in range(3)]
    try:
        servers[0].start()
        run_ids = [servers[0].start_run("flaky", {"dir": str(tmp_path), "failures": 2}) for _ in range(20)]
        for i in (0, 1):
            # Kill while retries are pending (and steps may be executing), then start the next server.
            server = servers[i]
            poll(
                "a pending retry",
                lambda server=server: any(s["status"] == "retrying" for r in run_ids for s in server.run(r)["steps"]),
                60,
            )
            server.stop(signal.SIGKILL)
            servers[i + 1].start()
        last = servers[2]
        runs = [last.wait_run(r, "completed", "failed", "cancelled", timeout_s=120) for r in run_ids]
        assert [r["status"] for r in runs] == ["completed"] * 20, [(r["id"], r["error"]) for r in runs]
        for r in runs:
            assert attempts(last, r["id"], "fetch")[-1]["status"] == "completed"
        assert last.stop(signal.SIGTERM) is not None
    finally:
        for server in servers:
            server.close()
    rows = ws.sql("SELECT count(*) AS n FROM runs WHERE status IN ('queued', 'running')")
    assert rows[0]["n"] == 0
    assert ws.sql("SELECT count(*) AS n FROM steps WHERE status IN ('running', 'retrying')")[0]["n"] == 0
    check_clean(ws)


def test_a_notification_waits_for_a_receiver_that_is_down_across_a_server_restart(tmp_path: Path) -> None:
    from tests.receiver import Receiver, event

    receiver = Receiver()  # not started: connections are refused
    token = "tok-0a1b2c3d4e5f"
    env = {
        **FAST,
        "STEPDECK_WEBHOOK_URL": receiver.url(f"/hook/{token}"),
        "STEPDECK_WEBHOOK_SECRET": "a-secret",
        "STEPDECK_NOTIFY_RETRY_S": "0.2",
    }
    ws = Workspace(tmp_path / "ws", WORKFLOWS, {"retrysteps": STEPS}, env=env)
    first = Server(ws, log_name="first.log")
    second = Server(ws, log_name="second.log")
    try:
        first.start()
        run_id = first.start_run("flaky", {"dir": str(tmp_path), "failures": 9})  # fails for good
        first.wait_run(run_id, "failed", timeout_s=60)

        def tried() -> list[dict[str, Any]]:
            found = first.client.get("/api/notifications").json()
            return [d for d in found if d["attempts"] >= 2 and d["status"] == "pending"]

        (pending,) = poll("failed tries while the receiver is down", tried, 60)
        assert pending["event"] == "run.failed" and pending["last_error"]
        assert first.stop(signal.SIGTERM) is not None

        receiver.start()
        second.start()
        (got,) = receiver.wait_for(event("run.failed"), timeout_s=60)
        assert got.json["run"] == {
            "id": run_id,
            "workflow": "flaky",
            "status": "failed",
            "error": "step 'fetch' failed: RuntimeError: transient failure 3",
        }

        def delivered() -> dict[str, Any] | None:
            found = second.client.get("/api/notifications").json()
            return next((d for d in found if d["status"] == "delivered"), None)

        done = poll("the delivery recorded", delivered, 30)
        assert done["id"] == pending["id"] and done["attempts"] > pending["attempts"]
        listing = second.client.get("/api/notifications").text
        assert second.stop(signal.SIGTERM) is not None
    finally:
        first.close()
        second.close()
        receiver.stop()
    assert len(receiver.received(event("run.failed"))) == 1
    # The target's URL carries a token: it is neither shown nor logged nor stored.
    assert token not in listing
    assert token not in first.log_text() + second.log_text()
    assert not ws.sql("SELECT id FROM deliveries WHERE target_label LIKE ? OR last_error LIKE ?", (f"%{token}%",) * 2)
    check_clean(ws)
