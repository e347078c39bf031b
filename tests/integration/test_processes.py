"""Real processes: `main.py serve` over HTTP (selection, SSE, shutdown), and the terminal commands.

Everything goes through the stable interfaces (ARCHITECTURE.md): STEPDECK_* variables, flags, the JSON API
and exit codes. One server is shared by the tests of this module that leave it running (each uses its
own workflow run); tests that stop or kill a server get their own.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.served import ROOT, Server, Workspace, serving
from ui.app import API_GZIP_MIN_BYTES

STEPS_MODULE = '''
import pathlib
import time


def gated(ctx):
    """Waits (in its thread, like a slow sync call) until the file GATE_DIR/<step key> exists."""
    gate = pathlib.Path(ctx.inputs["gate_dir"]) / ctx.step_key
    ctx.log(f"waiting for gate {ctx.step_key}")
    deadline = time.monotonic() + 60
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.02)
    return f"{ctx.step_key} passed"


def drafts(ctx):
    return [f"draft-{i}" for i in range(ctx.alternatives)]


def use(ctx):
    return "used:" + ",".join(str(v) for v in ctx.outputs.values())


def boom(ctx):
    raise ValueError("the step exploded on purpose")
'''

WORKFLOWS = {
    "proc-pick": """
        name: proc-pick
        steps:
          - key: gen
            label: Generate
            call: procsteps:drafts
            alternatives: 3
            select: human
          - key: use
            label: Use
            call: procsteps:use
        """,
    "proc-gated": """
        name: proc-gated
        inputs:
          gate_dir: string
        steps:
          - key: a
            call: procsteps:gated
          - key: b
            call: procsteps:gated
          - key: c
            call: procsteps:gated
        """,
    "proc-boom": """
        name: proc-boom
        steps:
          - key: first
            call: procsteps:use
          - key: explode
            call: procsteps:boom
        """,
}
MODULES = {"procsteps": STEPS_MODULE}
ACTIVE = {"queued", "running"}


@contextlib.contextmanager
def step_a_running(ws: Workspace, tmp_path: Path) -> Iterator[tuple[Server, int]]:
    """A server with a run of proc-gated whose step a is running (held at its gate)."""
    gates = tmp_path / "gates"
    gates.mkdir()
    with serving(ws) as server:
        run_id = server.start_run("proc-gated", {"gate_dir": str(gates)})
        server.wait_step(run_id, "a", "running")
        yield server, run_id


def workspace(directory: Path) -> Workspace:
    return Workspace(directory, WORKFLOWS, MODULES)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for this module, started without --host or STEPDECK_HOST (so it binds the default)."""
    with serving(workspace(tmp_path_factory.mktemp("served")), host=None) as s:
        yield s


@pytest.fixture
def server_log(server: Server) -> Iterator[Server]:
    """The shared server; what it logged during the test is printed at teardown (pytest shows it on failure)."""
    start = len(server.log_text())
    yield server
    print(f"--- server log during this test ---\n{server.log_text()[start:][-20000:]}")


@pytest.fixture
def gates(tmp_path: Path) -> Path:
    """Directory of the gate files `procsteps:gated` waits for (one per test: runs never share gates)."""
    directory = tmp_path / "gates"
    directory.mkdir()
    return directory


def open_gate(gates: Path, key: str) -> None:
    (gates / key).write_text("open")


def step_of(run: dict[str, Any], key: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["key"] == key)


# --- Server-Sent Events over real HTTP -------------------------------------------------------------------


@dataclass
class Frame:
    id: int | None
    event: str | None
    data: dict[str, Any] | None
    comment: str | None = None

    def is_step(self, key: str, status: str) -> bool:
        return (
            self.event == "step"
            and self.data is not None
            and (self.data["step"], self.data["to_status"])
            == (
                key,
                status,
            )
        )

    def is_run(self, status: str) -> bool:
        return self.event == "run" and self.data is not None and self.data["to_status"] == status


def sse_frames(lines: Iterator[str]) -> Iterator[Frame]:
    """Parse an event stream: `id:`/`event:`/`data:` frames separated by blank lines; `:` lines are comments."""
    fields: dict[str, list[str]] = {}
    for line in lines:
        if line == "":
            if fields:
                data = "\n".join(fields.get("data", []))
                ids = fields.get("id")
                events = fields.get("event")
                yield Frame(int(ids[0]) if ids else None, events[0] if events else None, json.loads(data))
                fields = {}
            continue
        if line.startswith(":"):
            yield Frame(None, None, None, comment=line[1:].strip())
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))


def check_frames(frames: list[Frame], run_id: int) -> None:
    """Persisted frames carry their id in the data too; only ephemeral notices come without an id."""
    for f in frames:
        if f.comment is not None:
            continue
        assert f.data is not None, f
        assert f.event == f.data["kind"], f
        assert f.data["run_id"] == run_id, f
        if f.id is None:
            assert f.event in {"progress", "log"}, f
            if f.event == "log":  # a log line comes with the time it was written
                assert datetime.fromisoformat(f.data["at"]).utcoffset() == timedelta(0), f
        else:
            assert f.data["id"] == f.id, f


def test_sse_streams_live_transitions_and_resumes_after_last_event_id(server_log: Server, gates: Path) -> None:
    server = server_log
    run_id = server.start_run("proc-gated", {"gate_dir": str(gates)})
    url = f"/api/runs/{run_id}/events"

    # First viewer: watches until step a runs, then goes away while the run goes on.
    first: list[Frame] = []
    with server.client.stream("GET", url) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for frame in sse_frames(r.iter_lines()):
            first.append(frame)
            if frame.is_step("a", "running"):
                break
    open_gate(gates, "a")
    server.wait_step(run_id, "b", "running")  # a completed and b started while nobody watched
    last_id = max(f.id for f in first if f.id is not None)

    # Second viewer resumes with Last-Event-ID: the missed events are replayed, then it follows live.
    second: list[Frame] = []
    replayed: list[Frame] = []
    live = False
    with server.client.stream("GET", url, headers={"Last-Event-ID": str(last_id)}) as r:
        assert r.status_code == 200
        for frame in sse_frames(r.iter_lines()):
            second.append(frame)
            if frame.comment == "live":
                live = True
                open_gate(gates, "b")
            elif not live:
                replayed.append(frame)
            if frame.is_step("c", "running"):
                open_gate(gates, "c")
            if frame.is_run("completed"):
                break
    assert live, second

    check_frames(first + second, run_id)
    assert [(f.data or {}).get("step") for f in replayed if f.event == "step"] == ["a", "b"], replayed
    assert replayed[0].id is not None
    assert replayed[0].id > last_id
    # ephemeral notices arrive live (c logs while it waits on its gate), without an id
    assert any(f.event == "log" and f.id is None and (f.data or {}).get("step") == "c" for f in second), second

    ids = [f.id for f in first + second if f.id is not None]
    everything = server.client.get(url, params={"follow": "false"}).json()
    assert ids == [e["id"] for e in everything], "every event exactly once, in order, across the reconnection"
    transitions = [(f.data["step"], f.data["to_status"]) for f in first + second if f.event == "step" and f.data]
    assert transitions == [(k, s) for k in "abc" for s in ("running", "completed")]
    assert server.run(run_id)["status"] == "completed"


def test_sse_viewers_that_disconnect_mid_run_do_not_affect_it(server_log: Server, gates: Path) -> None:
    server = server_log
    run_id = server.start_run("proc-gated", {"gate_dir": str(gates)})
    url = f"/api/runs/{run_id}/events"
    server.wait_step(run_id, "a", "running")

    # A polite viewer that closes after the first live frame.
    with server.client.stream("GET", url) as r:
        for frame in sse_frames(r.iter_lines()):
            if frame.comment == "live":
                break
    # A viewer whose connection is reset (RST) mid-stream.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # A viewer that sends half a request and vanishes.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())

    for key in "abc":
        open_gate(gates, key)
    run = server.wait_run(run_id, "completed", "failed", "cancelled")
    assert run["status"] == "completed", run["error"]
    assert [(s["key"], s["status"], s["attempt"]) for s in run["steps"]] == [
        ("a", "completed", 1),
        ("b", "completed", 1),
        ("c", "completed", 1),
    ]
    assert server.client.get("/api/health").json() == {"status": "ok"}


# --- human selection over HTTP -----------------------------------------------------------------------------


def test_human_selection_waits_then_continues_with_the_chosen_alternative(server_log: Server) -> None:
    server = server_log
    run_id = server.start_run("proc-pick")
    run = server.wait_run(run_id, "waiting", "failed", "completed")
    assert run["status"] == "waiting"
    gen = step_of(run, "gen")
    assert (gen["status"], gen["alternatives"], gen["selected_index"], gen["output"]) == (
        "waiting",
        ["draft-0", "draft-1", "draft-2"],
        None,
        None,
    )
    assert step_of(run, "use")["status"] == "pending"
    assert run["needs_choice"] == ["gen"]

    r = server.client.post(f"/api/runs/{run_id}/steps/gen/select", json={"index": 1})
    assert r.status_code == 200, r.text
    run = server.wait_run(run_id, "completed", "failed")
    assert run["status"] == "completed", run["error"]
    assert (step_of(run, "gen")["output"], step_of(run, "gen")["selected_index"]) == ("draft-1", 1)
    assert step_of(run, "use")["output"] == "used:draft-1"
    events = server.client.get(f"/api/runs/{run_id}/events", params={"follow": "false"}).json()
    selected = [e for e in events if e["kind"] == "action" and e["step"] == "gen"]
    assert [e["actor"] for e in selected] == ["api@127.0.0.1"]


# --- the served app ----------------------------------------------------------------------------------------


def test_docs_and_openapi_answer(server_log: Server) -> None:
    server = server_log
    docs = server.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    spec = server.client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for path in (
        "/api/health",
        "/api/workflows",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/steps/{key}/rerun",
        "/api/runs/{run_id}/steps/{key}/select",
        "/api/runs/{run_id}/attempts",
        "/api/runs/{run_id}/events",
    ):
        assert path in paths, path
    assert "post" in paths["/api/runs"]


def test_api_answers_are_compressed_when_large_and_sent_as_they_are_when_small(tmp_path: Path) -> None:
    """GZip, when the client asks for it, only where it pays: a run of a few steps is sent as it is, a run
    of many steps compressed."""
    long = "name: long\nsteps:\n" + "".join(f"  - key: s{i}\n    call: procsteps:use\n" for i in range(80))
    ws = Workspace(tmp_path / "ws", {**WORKFLOWS, "long": long}, MODULES)
    gzip = {"accept-encoding": "gzip"}
    with serving(ws) as server:
        small = server.client.post("/api/runs", json={"workflow": "proc-boom", "inputs": {}}, headers=gzip)
        assert small.status_code == 201, small.text
        assert "content-encoding" not in small.headers
        assert len(small.content) < API_GZIP_MIN_BYTES
        run_id = server.start_run("long")
        large = server.client.get(f"/api/runs/{run_id}", headers=gzip)
        assert large.status_code == 200, large.text
        assert large.headers.get("content-encoding") == "gzip"
        assert len(large.content) >= API_GZIP_MIN_BYTES  # what httpx decoded
        assert len(large.json()["steps"]) == 80


def test_served_api_errors_are_json_4xx(server_log: Server) -> None:
    server = server_log
    for method, path, body in [
        ("GET", "/api/runs/does-not-exist", None),
        ("GET", "/api/runs/999999", None),
        ("POST", "/api/runs", {"workflow": "nope", "inputs": {}}),
        ("GET", "/api/runs?status=bogus", None),
    ]:
        r = server.client.request(method, path, json=body)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert set(r.json()) >= {"error", "message"}
    bad_json = server.client.post("/api/runs", content=b"{", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port`, from /proc/net/tcp{,6} (Linux)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    raw = bytes.fromhex(address)
                    if len(raw) == 4:
                        found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                    else:
                        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                        found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_serve_binds_loopback_by_default(server_log: Server) -> None:
    # The shared server was started with neither --host nor STEPDECK_HOST.
    assert listening_addresses(server_log.port) == {"127.0.0.1"}
    help_text = server_log.ws.cli("serve", "--help")
    assert help_text.returncode == 0
    assert "127.0.0.1" in help_text.stdout


# --- stopping servers --------------------------------------------------------------------------------------


def assert_nothing_active(ws: Workspace, run_id: int) -> dict[str, Any]:
    """The run and its steps/attempts are in settled states; returns the run's row."""
    run = ws.sql("SELECT status, error, owner FROM runs WHERE id = ?", (run_id,))[0]
    assert run["status"] not in ACTIVE, run
    assert ws.sql("SELECT key, status FROM steps WHERE run_id = ? AND status = 'running'", (run_id,)) == []
    assert ws.sql("SELECT id FROM attempts WHERE run_id = ? AND status = 'running'", (run_id,)) == []
    return run


def assert_interrupted_at_a(ws: Workspace, run_id: int) -> None:
    run = assert_nothing_active(ws, run_id)
    assert run["status"] == "failed", run
    assert run["error"].startswith("interrupted:"), run
    assert "object at 0x" not in run["error"], f"the reason is not for people: {run['error']!r}"
    steps = {r["key"]: r["status"] for r in ws.sql("SELECT key, status FROM steps WHERE run_id = ?", (run_id,))}
    assert steps == {"a": "failed", "b": "pending", "c": "pending"}
    attempt = ws.sql("SELECT status, error FROM attempts WHERE run_id = ?", (run_id,))
    assert [a["status"] for a in attempt] == ["failed"]
    assert attempt[0]["error"], attempt
    check = ws.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no problems found" in check.stdout


def test_sigterm_mid_step_leaves_the_run_failed_as_interrupted(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws")
    with step_a_running(ws, tmp_path) as (server, run_id):
        code = server.stop(signal.SIGTERM, timeout_s=15)
        assert code is not None, f"the server ignored SIGTERM for 15 s:\n{server.log_tail()}"
        assert_interrupted_at_a(ws, run_id)


def test_sigterm_with_an_open_event_stream_still_stops_the_server(tmp_path: Path) -> None:
    """A viewer must not keep the server (and so its runs) alive: SIGTERM still ends it promptly."""
    ws = workspace(tmp_path / "ws")
    with step_a_running(ws, tmp_path) as (server, run_id):
        streaming = threading.Event()

        def watch() -> None:
            url = f"{server.base_url}/api/runs/{run_id}/events"
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.Client(timeout=30) as client,
                client.stream("GET", url) as r,
            ):
                for line in r.iter_lines():
                    if line == ": live":
                        streaming.set()

        viewer = threading.Thread(target=watch, daemon=True)
        viewer.start()
        assert streaming.wait(10), "the event stream did not start"
        code = server.stop(signal.SIGTERM, timeout_s=10)
        viewer.join(10)
        assert code is not None, f"with a viewer connected, the server ignored SIGTERM for 10 s:\n{server.log_tail()}"
        assert_interrupted_at_a(ws, run_id)


@pytest.mark.sqlite_only  # liveness by process and heartbeat; on PostgreSQL by lease (tests/postgres/test_workers.py)
def test_sweep_fails_the_runs_of_a_killed_server(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws")
    with step_a_running(ws, tmp_path) as (server, run_id):
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    assert ws.sql("SELECT status FROM runs WHERE id = ?", (run_id,)) == [{"status": "running"}]

    swept = ws.cli("sweep")
    assert swept.returncode == 0, swept.stderr
    assert f"run {run_id}: failed, interrupted" in swept.stdout
    assert "'a'" in swept.stdout  # names the step that was running
    assert "1 orphaned run(s) failed" in swept.stdout
    assert_interrupted_at_a(ws, run_id)

    again = ws.cli("sweep")
    assert again.returncode == 0
    assert "0 orphaned run(s) failed" in again.stdout


# --- the terminal commands -------------------------------------------------------------------------------


def test_run_market_brief_headless_prints_progress_and_the_output(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, bundled=True)  # STEPDECK_WORKFLOWS unset: ./workflows of the project root
    r = ws.cli("run", "market-brief", "-i", "company=Globex")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for line in ("research (attempt 1): running", "brief (attempt 1): completed", "run 1: completed"):
        assert line in out, out
    assert "# Market brief: Globex" in out
    assert "GloLabs" in out  # the joined branches reach the final output
    assert ws.sql("SELECT status FROM runs") == [{"status": "completed"}]


def test_headless_human_selection_exits_3_then_continues_after_post_select(tmp_path: Path) -> None:
    """Acceptance: the human-selection example stops in waiting and continues after POST …/select."""
    ws = Workspace(tmp_path, bundled=True)
    server = Server(ws)
    try:
        r = ws.cli("run", "blog-post", "-i", "topic=bees", env={"STEPDECK_PORT": str(server.port)})
        assert r.returncode == 3, r.stdout + r.stderr
        assert "waiting for a choice at step 'draft'" in r.stdout, r.stdout
        command = re.search(r"curl -X POST (\S+/select) .* -d '(\{.*\})'", r.stdout)
        assert command, r.stdout
        url, body = command.group(1), json.loads(command.group(2))
        assert url == f"{server.base_url}/api/runs/1/steps/draft/select"
        assert body == {"index": 0}
        assert ws.sql("SELECT status FROM runs") == [{"status": "waiting"}]

        server.start()
        body["index"] = 1  # the second draft, to see that the choice is what flows downstream
        selected = httpx.post(url, json=body, timeout=15)
        assert selected.status_code == 200, selected.text
        run = server.wait_run(1, "completed", "failed")
        assert run["status"] == "completed", run["error"]
        draft, polish = step_of(run, "draft"), step_of(run, "polish")
        assert draft["selected_index"] == 1
        assert draft["output"].startswith("Draft 2 (a worked example")
        assert "through a worked example" in polish["output"]
        assert "through the big picture" not in polish["output"]
        assert step_of(run, "stats")["output"]["words"] > 0
        assert draft["attempt"] == 1  # continuing did not re-run the drafts
    except BaseException:
        print(f"--- server log ---\n{server.log_tail(200)}")
        raise
    finally:
        server.close()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-i", "topic=bees", "-i", "words=many"], "words"),
        ([], "topic"),
        (["-i", "topic=bees", "-i", "colour=red"], "colour"),
        (["-i", "topic=bees", "-i", "tone=grumpy"], "tone"),
        (["-i", "topic"], "topic"),
    ],
)
def test_run_with_bad_inputs_exits_2_naming_the_input(tmp_path: Path, args: list[str], named: str) -> None:
    ws = Workspace(tmp_path, bundled=True)
    r = ws.cli("run", "blog-post", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert named in r.stderr, r.stderr
    assert ws.run_count() == 0


def test_run_of_an_unknown_workflow_exits_2(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, bundled=True)
    r = ws.cli("run", "no-such-flow")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no-such-flow" in r.stderr
    assert "blog-post" in r.stderr  # and says which workflows exist


def test_run_of_a_failing_workflow_exits_1_with_the_reason(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    r = ws.cli("run", "proc-boom")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the step exploded on purpose" in r.stdout
    assert ws.sql("SELECT status, error FROM runs")[0]["status"] == "failed"


def test_check_is_clean_then_finds_a_planted_impossible_state(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, bundled=True)
    assert ws.cli("run", "market-brief").returncode == 0
    clean = ws.cli("check")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no problems found" in clean.stdout

    ws.sql("UPDATE steps SET status = 'running' WHERE run_id = 1 AND key = 'brief'")
    found = ws.cli("check")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "run 1 step 'brief'" in found.stdout, found.stdout


def test_migrate_twice_then_up_to_date_and_sweep_on_a_quiet_database(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, bundled=True)
    first = ws.cli("migrate")
    assert first.returncode == 0, first.stderr
    assert "applied:" in first.stdout
    assert {"runs", "steps", "attempts", "events"} <= ws.tables()
    second = ws.cli("migrate")
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    swept = ws.cli("sweep")
    assert swept.returncode == 0, swept.stderr
    assert "0 orphaned run(s) failed" in swept.stdout


@pytest.mark.sqlite_only  # on PostgreSQL `migrate` is a step of its own (tests/postgres/test_schema_version.py)
def test_a_first_serve_creates_and_migrates_a_new_database_file_then_runs(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws", WORKFLOWS, MODULES, migrated=False)
    assert not ws.db_path.exists()
    with serving(ws) as server:
        run_id = server.start_run("proc-pick")
        assert server.wait_run(run_id, "waiting")["status"] == "waiting"
    names = {p.stem for p in (ROOT / "models" / "migrations").glob("[0-9]*.py")}
    assert {r["name"] for r in ws.sql("SELECT name FROM tortoise_migrations")} == names
    check = ws.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_bad_setting_in_the_environment_exits_2_naming_it(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, bundled=True, env={"STEPDECK_PORT": "eighty"})
    r = ws.cli("check")
    assert r.returncode == 2
    assert "STEPDECK_PORT" in r.stderr
