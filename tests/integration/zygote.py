"""A process with Stepdeck's modules imported once, that forks the suite's served processes.

Starting `main.py serve` costs a second and a half of CPU, most of it importing NiceGUI, FastAPI, Tortoise
and our own modules, and the suite starts a few hundred of them: on a 2-core machine that was the largest
part of its time. This process imports them once per test process; each served process is a fork of it
that then runs `main.main(argv)` with its own environment, working directory and log, as `main.py` would
(`python main.py ...` is what runs when the environment asks for what a fork cannot give: a preloaded
library, other Python settings).

Command-line runs of `main.py` (`Workspace.cli`) are forks too, their output read from files.

The test process talks to it over a Unix socket, one JSON line each way: `spawn` (the child's pid) and
`status` (its exit code once it has ended, as `Popen.returncode` gives it). It reaps its children, and it
exits when the test process that started it is gone.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# What Python reads when it starts, before any code runs: a child whose environment differs in these needs
# a fresh interpreter.
AT_START = (
    "LD_PRELOAD",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPYCACHEPREFIX",
    "PYTHONHASHSEED",
)
SHARED = "STEPDECK_TEST_ZYGOTE"  # names the socket of a zygote shared by the test processes
ACCEPT_S = 0.2  # how often it reaps children and looks for its parent while nobody asks


# Everything `serve` and `worker` import, `main` first: it sets what must be set before NiceGUI is imported.
PRELOAD = ("main", "engine.engine", "engine.registry", "models.db", "ui.app", "ui.cli", "ui.security", "nicegui.ui")


def preload() -> None:
    """Import what a served process needs, so that a fork of this process starts at once."""
    sys.path.insert(0, str(ROOT))
    for module in PRELOAD:
        importlib.import_module(module)


def serve(path: str, parent: int) -> None:
    os.chdir(ROOT)
    preload()
    if threading.active_count() != 1:  # a fork copies only the thread that forks: nothing may run yet
        raise SystemExit(f"a thread runs after the imports, a fork would lose it: {threading.enumerate()}")
    exits: dict[int, int] = {}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(ACCEPT_S)
    print("ready", flush=True)
    while os.getppid() == parent:
        _reap(exits)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(None)
            request = json.loads(conn.makefile("r").readline())
            if request["op"] == "spawn":
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _child(request)  # never returns
                answer: dict[str, Any] = {"pid": pid}
            else:
                _reap(exits)
                answer = {"code": exits.get(request["pid"])}
            conn.sendall(json.dumps(answer).encode() + b"\n")


def _reap(exits: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        exits[pid] = os.waitstatus_to_exitcode(status)


def _child(request: dict[str, Any]) -> None:
    code: Any = 1
    try:
        for fd, path, flags in (
            (0, request["stdin"], os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_APPEND | os.O_CREAT),
            (2, request["stderr"], os.O_WRONLY | os.O_APPEND | os.O_CREAT),
        ):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, write_through=True)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # As a new interpreter has them: SIGINT raises KeyboardInterrupt, SIGPIPE stays ignored (a write to a
        # closed socket is an error, not the end of the process), the others are the defaults.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        _read_environment_again()
        sys.argv = list(request["argv"])
        import main

        code = main.main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _read_environment_again() -> None:
    """What the preloaded modules read from the environment when imported, read from the child's."""
    from nicegui.storage import Storage

    Storage.path = Path(os.environ.get("NICEGUI_STORAGE_PATH", ".nicegui")).resolve()
    Storage.redis_url = os.environ.get("NICEGUI_REDIS_URL")
    Storage.redis_key_prefix = os.environ.get("NICEGUI_REDIS_KEY_PREFIX", "nicegui:")


class Forked:
    """A child of the zygote, with what the suite uses of `subprocess.Popen`."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self._zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["main.py"], timeout or 0)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The test process's zygote, started on first use."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._path = ""
        self._env: dict[str, str] = {}
        self._shared = os.environ.get(SHARED)  # the socket of the zygote the xdist controller started
        self._starting = threading.Lock()  # tests start processes from several threads (`start_all`)

    def can_start(self, cmd: list[str], env: dict[str, str]) -> bool:
        """Whether a fork runs `cmd` as a new interpreter would: `main.py` under the same start-up settings."""
        if cmd[:2] != [sys.executable, "main.py"] or os.environ.get("STEPDECK_TEST_NO_FORK"):
            return False
        base = self._env or _zygote_env()
        return all(env.get(name) == base.get(name) for name in AT_START)

    def spawn(
        self, cmd: list[str], env: dict[str, str], stdout: Path, stderr: Path | None = None, stdin: Path | None = None
    ) -> Forked:
        """Fork a child running `cmd` with its output appended to `stdout` (and `stderr`, else the same file)."""
        streams = {"stdin": str(stdin or os.devnull), "stdout": str(stdout), "stderr": str(stderr or stdout)}
        answer = self._ask({"op": "spawn", "argv": cmd[1:], "env": env, "cwd": str(ROOT), **streams})
        return Forked(self, int(answer["pid"]))

    def run(
        self, cmd: list[str], env: dict[str, str], timeout_s: float, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """As `subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)`, in a fork."""
        with tempfile.TemporaryDirectory(prefix="stepdeck-cli-") as tmp:
            out, err, given = Path(tmp) / "out", Path(tmp) / "err", Path(tmp) / "in"
            given.write_text(input or "")
            child = self.spawn(cmd, env, out, err, given if input is not None else None)
            try:
                code = child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                raise
            return subprocess.CompletedProcess(cmd, code, _text(out), _text(err))

    def exit_code(self, pid: int) -> int | None:
        code = self._ask({"op": "status", "pid": pid})["code"]
        return None if code is None else int(code)

    def start_for_workers(self) -> None:
        """Start now, and name the socket to the test processes started later (xdist's workers): one zygote
        for them all, instead of the imports done again in each."""
        self._start()
        os.environ[SHARED] = self._path

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self._start()
        try:
            return self._exchange(request)
        except OSError:
            if self._proc is not None:
                raise
            self._shared = None  # the shared one is gone: one of our own
            self._start()
            return self._exchange(request)

    def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self._path)
            s.sendall(json.dumps(request).encode() + b"\n")
            answer: dict[str, Any] = json.loads(s.makefile("r").readline())
            return answer

    def _start(self) -> None:
        with self._starting:  # another thread's zygote may not be listening yet
            self._start_once()

    def _start_once(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is None and self._shared:
            self._path = self._shared
            return
        self._path = str(Path(tempfile.mkdtemp(prefix="stepdeck-zygote-")) / "socket")
        self._env = _zygote_env()
        code = f"from tests.integration import zygote; zygote.serve({self._path!r}, {os.getpid()})"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=self._env, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != "ready":
            raise AssertionError(f"the zygote did not start: {line!r} (exit {self._proc.wait()})")

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _zygote_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPDECK_", "PYTEST_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env
