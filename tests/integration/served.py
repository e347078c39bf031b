"""Real Stepdeck processes for tests: `main.py serve` and the other commands, on a temporary workspace.

A `Workspace` is a temporary directory with its own database (a SQLite file, or a PostgreSQL database
with `STEPDECK_TEST_DB=postgres`) and (optionally) its own workflows directory; `Server` runs
`main.py serve` on it as a subprocess on a free port. Everything is driven from outside, as a user's
script would: STEPDECK_* variables, command-line flags and HTTP.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from tests import pgdb
from tests.dbtemplate import migrated_copy
from tests.integration.zygote import Forked, Zygote

ROOT = Path(__file__).resolve().parents[2]
SETTLED_RUN = {"completed", "failed", "cancelled", "waiting"}
# How long a test waits for a process to start, answer or finish: a hang still fails, but a machine
# loaded many times over (starting Python and NiceGUI alone takes tens of seconds there) gives the same
# verdict as a quiet one.
PATIENCE_S = 300.0

# The smallest workflow a served process can run: one step of a module in its workflows directory.
QUICK_WORKFLOWS = {"quick": "name: quick\nsteps:\n  - key: a\n    call: quicksteps:hello\n"}
QUICK_MODULES = {"quicksteps": "def hello(ctx):\n    return 'hello'\n"}


def every_minute(catch_up: str = "skip") -> str:
    """The definition of `tick`: one step echoing its input `who`, started every minute (UTC) by its
    schedule `minutely` with `who` = "the schedule"; `catch_up` is what the schedule does with fire
    times missed while no process ran it."""
    return f"""\
name: tick
inputs:
  who:
    type: string
    default: nobody
steps:
  - key: echo
    call: tests.stepfns:echo_inputs
schedules:
  - name: minutely
    cron: "* * * * *"
    timezone: UTC
    catch_up: {catch_up}
    inputs: {{who: the schedule}}
"""


# Ports for test servers come from below Linux's ephemeral range (32768-60999), where the kernel never
# hands one to an outgoing connection, and each xdist process has its own band: a port picked here
# cannot be taken by a client socket or by the other test process in the second before the server binds it.
_PORT_BASE, _PORT_BAND = 20000, 3000
_next_port = itertools.count(os.getpid() % _PORT_BAND)


def free_port() -> int:
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    base = _PORT_BASE + (worker % 4) * _PORT_BAND
    for _ in range(_PORT_BAND):
        port = base + next(_next_port) % _PORT_BAND
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise AssertionError(f"no free port in {base}-{base + _PORT_BAND - 1}")


# libfaketime (Debian's faketime) shifts a process's wall clock and leaves its monotonic clock alone.
FAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


def shifted_clock(offset: str) -> dict[str, str]:
    """The environment of a process whose wall clock is `offset` away from the host's ("+20", "-3d")."""
    assert FAKETIME is not None, "Debian's faketime is needed (.ci/run installs it)"
    return {"LD_PRELOAD": str(FAKETIME), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without STEPDECK_* settings (so only what a test sets applies)."""
    # PYTEST_* too: NiceGUI treats a process that has PYTEST_CURRENT_TEST as its own screen test.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPDECK_", "PYTEST_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Workspace:
    """A temporary database (and workflows directory, unless `bundled`) for real processes."""

    def __init__(
        self,
        directory: Path,
        workflows: dict[str, str] | None = None,
        modules: dict[str, str] | None = None,
        *,
        bundled: bool = False,
        env: dict[str, str] | None = None,
        migrated: bool = True,
    ) -> None:
        """`migrated`: on SQLite, a process other than `migrate` or `check` finds the database already
        migrated (a copy of the template, as if an earlier start had migrated it: 1.4 s of CPU less a
        start); False leaves the first process to create and migrate it itself."""
        self.dir = directory
        self.migrated = migrated
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.dir / "stepdeck.db"
        self.db_url = pgdb.create_empty() if pgdb.ENABLED else f"sqlite://{self.db_path}"
        self.workflows_dir: Path | None = None
        # No shutdown grace unless a test asks for one: a SIGTERM in a test means "now".
        extra = {
            "STEPDECK_DB": self.db_url,
            "STEPDECK_SHUTDOWN_GRACE_S": "0",
            "STEPDECK_SECRET_FILE": str(self.dir / "secret.key"),
            "NICEGUI_STORAGE_PATH": str(self.dir / ".nicegui"),
            **(env or {}),
        }
        if not bundled:
            self.workflows_dir = self.dir / "workflows"
            self.workflows_dir.mkdir(exist_ok=True)
            for name, text in (workflows or {}).items():
                (self.workflows_dir / f"{name}.yaml").write_text(textwrap.dedent(text))
            for name, text in (modules or {}).items():
                (self.workflows_dir / f"{name}.py").write_text(textwrap.dedent(text))
            extra["STEPDECK_WORKFLOWS"] = str(self.workflows_dir)
        self.env = clean_env(extra)

    def cli(
        self, *args: str, timeout_s: float = PATIENCE_S, env: dict[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `main.py ARGS` from the project root, stdin not a terminal (empty, or `input`: a password for
        `users add`); returns the finished process."""
        self._prepare_for(args)
        cmd, full_env = [sys.executable, "main.py", *args], {**self.env, **(env or {})}
        if ZYGOTE.can_start(cmd, full_env):
            return ZYGOTE.run(cmd, full_env, timeout_s, input)
        stdin: dict[str, Any] = {"stdin": subprocess.DEVNULL} if input is None else {"input": input}
        return subprocess.run(
            cmd,
            cwd=ROOT,
            env=full_env,
            **stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start_cli(self, *args: str) -> subprocess.Popen[str]:
        """Start `main.py ARGS` from the project root, stdin not a terminal, its output piped; not waited for
        (several at once: `communicate()` each)."""
        self._prepare_for(args)
        return subprocess.Popen(
            [sys.executable, "main.py", *args],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def migrate_for_serve(self) -> None:
        """On PostgreSQL a server does not migrate (`migrate` is a step of its own there): do it first, with
        what `main.py migrate` runs, in this process (a process of its own would cost a Python start-up
        before every server start). On SQLite, see `migrated`."""
        if pgdb.ENABLED:
            pgdb.migrate_blocking(self.db_url)
        else:
            self._copy_template()

    def _prepare_for(self, args: tuple[str, ...]) -> None:
        if args[:1] == ("serve",):
            self.migrate_for_serve()
        elif args[:1] not in (("migrate",), ("check",)) and not pgdb.ENABLED:
            self._copy_template()

    def _copy_template(self) -> None:
        if self.migrated and not self.db_path.exists():
            migrated_copy(self.db_path)

    def add_user(self, name: str, password: str, role: str = "operator") -> None:
        """`main.py users add NAME --role ROLE`, the password piped on stdin as a script would."""
        done = self.cli("users", "add", name, "--role", role, input=password + "\n")
        assert done.returncode == 0, f"users add {name} -> {done.returncode}:\n{done.stdout}\n{done.stderr}"

    def add_token(self, user: str, name: str) -> str:
        """`main.py tokens add USER NAME`; returns the token it printed."""
        done = self.cli("tokens", "add", user, name)
        assert done.returncode == 0, f"tokens add -> {done.returncode}:\n{done.stdout}\n{done.stderr}"
        token = done.stdout.strip().splitlines()[-1]
        assert token.startswith("sdk_"), done.stdout
        return token

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Run one statement on the database directly (to read what a process left, or to plant states)."""
        if pgdb.ENABLED:
            return pgdb.sql(self.db_url, query, params)
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=10)) as conn:
            conn.row_factory = sqlite3.Row
            with conn:
                rows = conn.execute(query, params).fetchall()
            return [dict(r) for r in rows]

    def tables(self) -> set[str]:
        """Names of the tables the database holds."""
        if pgdb.ENABLED:
            sql = "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public'"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return {row["name"] for row in self.sql(sql)}

    def run_count(self) -> int:
        """How many runs the database holds (0 when no command ever created its tables)."""
        if pgdb.ENABLED:
            if not self.sql("SELECT to_regclass('runs') IS NOT NULL AS found")[0]["found"]:
                return 0
        elif not self.db_path.exists() or not self.sql("SELECT name FROM sqlite_master WHERE name = 'runs'"):
            return 0
        n: int = self.sql("SELECT count(*) AS n FROM runs")[0]["n"]
        return n


# The suite's served processes are forks of one preloaded process per test process (`zygote.py`).
ZYGOTE = Zygote()
atexit.register(ZYGOTE.close)
Process = subprocess.Popen[bytes] | Forked


class PortTaken(Exception):
    """The server could not bind its port: another program took it after it was picked."""


class LoggedProcess:
    """A `main.py` command run as a subprocess with its output in a log file: `Server` here and the PostgreSQL
    tests' workers. Starting, stopping and quoting the log when a test fails are the same for every command."""

    tail_lines = 60  # how many of the log's last lines a failure quotes

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: Process | None = None
        self._log: IO[bytes] | None = None

    def _launch(self, cmd: list[str], env: dict[str, str]) -> Process:
        """Start `cmd` in the repository with its output appended to the log, counted among the served processes
        (PostgreSQL's connections are limited): a fork of the test process's zygote where it can run it."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _end()
        pgdb.served_processes.before_start()
        if ZYGOTE.can_start(cmd, env):
            self.proc = ZYGOTE.spawn(cmd, env, stdout=self.log_path)
        else:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        pgdb.served_processes.add(self.proc.pid)
        return self.proc

    def _end(self, signals: Sequence[signal.Signals], timeout_s: float) -> int | None:
        """Send `signals` in turn to a running process and wait for its exit, SIGKILL after `timeout_s`; close the
        log. Returns the exit code (None if it was killed or never started)."""
        code: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    for sig in signals:
                        self.proc.send_signal(sig)
                try:
                    code = self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            else:
                code = self.proc.returncode
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int | None = None) -> str:
        return "\n".join(self.log_text().splitlines()[-(lines or self.tail_lines) :])


class Server(LoggedProcess):
    """`main.py serve` on a workspace, on a free port; `host=None` leaves the bind address to the default."""

    def __init__(
        self,
        ws: Workspace,
        *,
        host: str | None = "127.0.0.1",
        log_name: str = "server.log",
        extra_args: list[str] | None = None,
    ) -> None:
        self.ws = ws
        self.host = host
        self.extra_args = extra_args or []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__(ws.dir / log_name)
        self.client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(15.0))

    # --- process ---------------------------------------------------------------------------------

    def start(self, wait_s: float = PATIENCE_S) -> None:
        # A start that fails ends the process (seen at once); the wait only bounds a start on a starved machine.
        self.ws.migrate_for_serve()
        for _ in range(3):  # a port taken by another program between the pick and the bind: take another
            try:
                self._start(wait_s)
                return
            except PortTaken:
                self.stop()
                self.port = free_port()
                self.base_url = f"http://127.0.0.1:{self.port}"
                self.client.close()
                self.client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(15.0))
        self._start(wait_s)

    def _start(self, wait_s: float) -> None:
        cmd = [sys.executable, "main.py", "serve", "--port", str(self.port), *self.extra_args]
        if self.host is not None:
            cmd += ["--host", self.host]
        proc = self._launch(cmd, self.ws.env)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if f"{self.port}): address already in use" in self.log_tail():
                    raise PortTaken(self.port)
                raise AssertionError(f"server exited with {proc.returncode} while starting:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/api/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"server did not answer /api/health within {wait_s} s:\n{self.log_tail()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        """Send `sig` and wait for the exit; SIGKILL after `timeout_s`. Returns the exit code (None if killed)."""
        return self._end([sig], timeout_s)

    def close(self) -> None:
        self.stop()
        self.client.close()

    # --- HTTP ----------------------------------------------------------------------------------------

    def start_run(self, workflow: str, inputs: dict[str, Any] | None = None) -> int:
        r = self.client.post("/api/runs", json={"workflow": workflow, "inputs": inputs or {}})
        assert r.status_code == 201, f"POST /api/runs -> {r.status_code}: {r.text}\n{self.log_tail()}"
        run_id: int = r.json()["id"]
        return run_id

    def run(self, run_id: int) -> dict[str, Any]:
        r = self.client.get(f"/api/runs/{run_id}")
        assert r.status_code == 200, f"GET /api/runs/{run_id} -> {r.status_code}: {r.text}"
        body: dict[str, Any] = r.json()
        return body

    def wait_run(self, run_id: int, *statuses: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Poll the run until its status is one of `statuses`; fail with the server's log otherwise."""
        deadline = time.monotonic() + timeout_s
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["status"] in statuses:
                return run
            time.sleep(0.05)
        raise AssertionError(
            f"run {run_id} stayed {run.get('status')!r} (error {run.get('error')!r}), expected one of {statuses}:\n"
            f"{json.dumps(run.get('steps'), indent=1)[:3000]}\n{self.log_tail()}"
        )

    def wait_step(self, run_id: int, key: str, *statuses: str, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        step: dict[str, Any] = {}
        while time.monotonic() < deadline:
            step = next(s for s in self.run(run_id)["steps"] if s["key"] == key)
            if step["status"] in statuses:
                return step
            time.sleep(0.05)
        raise AssertionError(f"step {key!r} of run {run_id} stayed {step.get('status')!r}:\n{self.log_tail()}")


@contextlib.contextmanager
def serving(ws: Workspace, *, host: str | None = "127.0.0.1", log_name: str = "server.log") -> Iterator[Server]:
    """A started server that is always stopped; its log goes to stderr (shown by pytest) when the block fails."""
    server = Server(ws, host=host, log_name=log_name)
    try:
        server.start()
        yield server
    except BaseException:
        print(f"--- log of main.py serve on port {server.port} ---\n{server.log_tail(200)}", file=sys.stderr)
        raise
    finally:
        server.close()
