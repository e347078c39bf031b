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
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from tests import pgdb
from tests.integration.served import ROOT, Workspace, free_port

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


class Worker:
    """`main.py worker` on a workspace, with a health port."""

    def __init__(self, ws: Workspace, name: str, concurrency: int = 4, env: dict[str, str] | None = None) -> None:
        self.ws = ws
        self.name = name
        self.concurrency = concurrency
        self.env = env or {}
        self.port = free_port()
        self.log_path = ws.dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, wait_s: float = 90.0) -> str:
        """Start and wait until it takes work; returns its worker id."""
        cmd = [sys.executable, "main.py", "worker", "--concurrency", str(self.concurrency)]
        cmd += ["--health-port", str(self.port)]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**self.ws.env, **self.env}
        pgdb.served_processes.before_start()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        pgdb.served_processes.add(self.proc)
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
        code = None
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


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
