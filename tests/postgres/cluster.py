"""Real `main.py worker` processes on a workspace's PostgreSQL database, beside `main.py serve --no-engine`.

A worker is started with a health port; it is ready when `GET /health` answers 200, and the answer names
its worker id (new at every start and after a lost lease). Steps of the workflows here append one line per
execution to a file (`COUNT_FILE`): run, step, attempt, process id.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.integration.served import LoggedProcess, Workspace, free_port

COUNTING_STEPS = """\
import os
import time


def step(ctx):
    with open(os.environ["COUNT_FILE"], "a") as f:
        f.write(f"{ctx.run_id} {ctx.step_key} {ctx.attempt} {os.getpid()}\\n")
    time.sleep(float(ctx.inputs["sleep_s"]))
    return ctx.step_key
"""


def chain(name: str, steps: int, sleep_s: float) -> str:
    """A workflow of `steps` counting steps, one after the other."""
    lines = [f"name: {name}", "inputs:", f"  sleep_s: {{type: number, default: {sleep_s}}}", "steps:"]
    lines += [f"  - key: s{i}\n    call: counting:step" for i in range(steps)]
    return "\n".join(lines) + "\n"


class Worker(LoggedProcess):
    """`main.py worker` on a workspace, with a health port."""

    tail_lines = 80

    def __init__(self, ws: Workspace, name: str, concurrency: int = 4, env: dict[str, str] | None = None) -> None:
        self.ws = ws
        self.name = name
        self.concurrency = concurrency
        self.env = env or {}
        self.port = free_port()
        super().__init__(ws.dir / f"{name}.log")

    def start(self, wait_s: float = 90.0) -> str:
        """Start and wait until it takes work; returns its worker id."""
        cmd = [sys.executable, "main.py", "worker", "--concurrency", str(self.concurrency)]
        cmd += ["--health-port", str(self.port)]
        self._launch(cmd, {**self.ws.env, **self.env})
        return self.wait_healthy(wait_s)

    def health(self) -> tuple[int, dict[str, Any]] | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0)
            body: dict[str, Any] = r.json()
            return r.status_code, body
        return None

    def wait_healthy(self, wait_s: float = 90.0, other_than: str | None = None) -> str:
        """Wait for a 200 from /health (from a worker id other than `other_than`); returns the id."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            answer = self.health()
            if answer is not None and answer[0] == 200 and answer[1]["worker"] != other_than:
                worker_id: str = answer[1]["worker"]
                return worker_id
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not become healthy within {wait_s} s:\n{self.log_tail()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9, and reap it."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (after a SIGCONT, should a test have stopped it) and wait; SIGKILL after `timeout_s`."""
        return self._end([signal.SIGCONT, signal.SIGTERM], timeout_s)


def executions(count_file: Path) -> Counter[tuple[int, str]]:
    """How often each (run, step) was executed, from the lines the steps appended."""
    counts: Counter[tuple[int, str]] = Counter()
    with contextlib.suppress(FileNotFoundError):
        for line in count_file.read_text().splitlines():
            run_id, key, _attempt, _pid = line.split()
            counts[(int(run_id), key)] += 1
    return counts


def eventually(what: str, check: Callable[[], bool], timeout_s: float, logs: Callable[[], str] = str) -> None:
    """Poll `check` until it holds; fail naming `what` (with `logs()`) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s\n{logs()}")


def dump(ws: Workspace, query: str) -> str:
    return json.dumps(ws.sql(query), default=str, indent=1)[:4000]
