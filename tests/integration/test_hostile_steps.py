"""Step functions that fight the engine, in a real server: they swallow their cancellation, raise
exceptions that are not `Exception`s or whose message cannot be built, fork. None may wedge the
engine, keep the port, or be reported as anything but the step's own failure."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from tests.integration.served import Server, Workspace, serving

WORKFLOWS = {
    "stubborn": """
        steps:
          - key: a
            call: hostile:stubborn
            timeout_s: 1
    """,
    "stubborn-long": """
        steps:
          - key: a
            call: hostile:stubborn
    """,
    "quick": """
        steps:
          - key: a
            call: hostile:quick
    """,
    "base": """
        steps:
          - key: a
            call: hostile:base_exception
    """,
    "bad-str": """
        steps:
          - key: a
            call: hostile:bad_str
    """,
    "spawn": """
        steps:
          - key: a
            call: hostile:spawns
    """,
    "fork": """
        steps:
          - key: a
            call: hostile:forks
    """,
}

MODULE = """
import asyncio
import os
import time


async def stubborn(ctx):
    while True:  # swallows every cancellation
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            pass


def quick(ctx):
    return "done"


class Mine(BaseException):
    pass


def base_exception(ctx):
    raise Mine("a BaseException of the step's own")


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no message for you")


def bad_str(ctx):
    raise Unprintable()


def spawns(ctx):
    import subprocess

    # A program started without closing descriptors, as a careless step would: it inherits only
    # what is not close-on-exec.
    child = subprocess.Popen(["sleep", "30"], close_fds=False, start_new_session=True)
    return f"parent of {child.pid}"


def forks(ctx):
    pid = os.fork()
    if pid == 0:
        time.sleep(float(os.environ.get("HOSTILE_CHILD_SLEEP_S", "30")))  # then back to the engine's code
        return "child"
    return f"parent of {pid}"
"""


def _ws(tmp_path: Path, **env: str) -> Workspace:
    return Workspace(
        tmp_path, workflows=WORKFLOWS, modules={"hostile": MODULE}, env={"STEPDECK_CANCEL_GRACE_S": "0.5", **env}
    )


def test_steps_that_swallow_cancellation_are_abandoned_and_never_wedge_the_engine(tmp_path: Path) -> None:
    ws = _ws(tmp_path, STEPDECK_MAX_STEPS="2", STEPDECK_MAX_RUNS="3")
    with serving(ws) as server:
        # More stubborn steps than step slots: each times out, is abandoned, and frees its slot.
        stubborn = [server.start_run("stubborn") for _ in range(3)]
        quick = server.start_run("quick")
        for run_id in stubborn:
            run = server.wait_run(run_id, "failed", timeout_s=60)
            assert "did not stop when cancelled" in run["steps"][0]["error"], run["steps"][0]
        assert server.wait_run(quick, "completed", timeout_s=60)["status"] == "completed"
        # Cancelled by a person: the run is cancelled and its driver ends (a new run proceeds).
        long_run = server.start_run("stubborn-long")
        server.wait_step(long_run, "a", "running")
        assert server.client.post(f"/api/runs/{long_run}/cancel").status_code == 200
        assert server.wait_run(long_run, "cancelled")["status"] == "cancelled"
        assert server.wait_run(server.start_run("quick"), "completed", timeout_s=60)["status"] == "completed"
        # Shutdown with a stubborn step running is bounded.
        server.wait_step(server.start_run("stubborn-long"), "a", "running")
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout_s=60)
        assert code is not None, "SIGTERM did not stop the server within 60 s"
        print(f"shutdown with a stubborn step took {time.monotonic() - started:.1f} s")
    assert ws.cli("check").returncode == 0


def test_a_base_exception_or_an_unprintable_one_is_the_steps_failure(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    with serving(ws) as server:
        base = server.wait_run(server.start_run("base"), "failed", timeout_s=60)
        assert "Mine" in base["steps"][0]["error"], base["steps"][0]
        assert "a BaseException of the step's own" in base["steps"][0]["error"]
        assert "kept changing" not in (base["error"] or "")

        bad = server.wait_run(server.start_run("bad-str"), "failed", timeout_s=60)
        assert "Unprintable" in bad["steps"][0]["error"], bad["steps"][0]
        assert "could not record" not in bad["steps"][0]["error"] + (bad["error"] or "")
        assert server.wait_run(server.start_run("quick"), "completed")["status"] == "completed"
    assert ws.cli("check").returncode == 0


def test_a_step_that_forks_leaves_no_child_on_the_port(tmp_path: Path) -> None:
    assert_the_child_keeps_no_listening_socket(tmp_path, "fork")


def test_a_program_a_step_starts_does_not_inherit_the_listening_socket(tmp_path: Path) -> None:
    assert_the_child_keeps_no_listening_socket(tmp_path, "spawn")


def assert_the_child_keeps_no_listening_socket(tmp_path: Path, workflow: str) -> None:
    """Run `workflow`, whose step leaves a child process sleeping (its output: `parent of <pid>`), stop the server
    and bind its port again while the child still lives: the child did not keep the listening socket, so a
    restarted server can bind it. The child is killed afterwards."""
    server = Server(_ws(tmp_path))
    child: int | None = None
    try:
        server.start()
        run = server.wait_run(server.start_run(workflow), "completed", "failed", timeout_s=60)
        assert run["steps"][0]["output"].startswith("parent of "), run["steps"][0]
        child = int(run["steps"][0]["output"].removeprefix("parent of "))
        port = server.port
        assert server.stop(signal.SIGTERM) is not None
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a restarted server binds
            s.bind(("127.0.0.1", port))
        assert _alive(child)  # so it lived while the port was bound
    finally:
        server.close()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_forked_child_exits_as_soon_as_it_returns_to_the_engine(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    ws.env["HOSTILE_CHILD_SLEEP_S"] = "0.5"
    with serving(ws) as server:
        run = server.wait_run(server.start_run("fork"), "completed", "failed", timeout_s=60)
        child = int(run["steps"][0]["output"].removeprefix("parent of "))
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the forked child went on running the engine's code"
        # only the parent's outcome was recorded, once
        assert [s["output"] for s in server.run(run["id"])["steps"]] == [run["steps"][0]["output"]]
        assert server.wait_run(server.start_run("quick"), "completed")["status"] == "completed"
    assert ws.cli("check").returncode == 0


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not reaped by its parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
