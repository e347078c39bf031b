"""Migrations cut off part-way, raced by several processes, or left half-applied by an older version:
the database always opens afterwards, with every migration recorded once. Real processes."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.served import ROOT, Workspace

TABLES = {"runs", "steps", "attempts", "events", "llm_usage", "users", "api_tokens", "audit", "schedule_states"}


def _recorded(ws: Workspace) -> list[str]:
    return [r["name"] for r in ws.sql("SELECT name FROM tortoise_migrations ORDER BY name")]


def _migration_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "models" / "migrations").glob("0*.py"))


def _assert_whole(ws: Workspace) -> None:
    """`check` (which first applies what is pending) opens the database, and it holds every table."""
    done = ws.cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    tables = {r["name"] for r in ws.sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables >= TABLES
    assert _recorded(ws) == _migration_names()


def _migrate_with_file_limit(ws: Workspace, limit_bytes: int) -> subprocess.CompletedProcess[str]:
    """`main.py migrate` unable to write past `limit_bytes` in any file: what a full disk does to SQLite."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    # Nor any bytecode: Python writes a .pyc with one write() and does not check that it was whole, so a
    # module compiled under the limit would be left cut short in the suite's shared cache for every process.
    return subprocess.run(
        [sys.executable, "main.py", "migrate"],
        cwd=ROOT,
        env={**ws.env, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.sqlite_only
def test_a_migration_cut_off_by_a_full_disk_leaves_a_database_that_opens(tmp_path: Path) -> None:
    # Sizes at which the disk fills inside one migration or another (several land between a migration's
    # tables and its record, which used to leave tables nobody recorded).
    for limit_bytes in (32_768, 65_536, 100_000, 150_000, 200_000):
        ws = Workspace(tmp_path / f"limit-{limit_bytes}")
        cut = _migrate_with_file_limit(ws, limit_bytes)
        assert "Traceback" not in cut.stderr, cut.stderr
        assert set(_recorded(ws)) <= set(_migration_names())
        _assert_whole(ws)  # `check` migrates the rest, then audits


@pytest.mark.sqlite_only
def test_processes_racing_to_migrate_a_fresh_file_all_succeed(tmp_path: Path) -> None:
    for attempt in range(2):
        ws = Workspace(tmp_path / f"race-{attempt}")
        procs = [ws.start_cli("migrate") for _ in range(4)]
        outputs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, outputs
        applied = [name for out, _ in outputs for name in out.replace("applied: ", "").split(", ") if "models." in name]
        assert sorted(n.strip().removeprefix("models.") for n in applied) == _migration_names()  # each once
        _assert_whole(ws)


@pytest.mark.sqlite_only
def test_a_half_applied_database_is_repaired_with_a_message(tmp_path: Path) -> None:
    # What an older version left when cut off between a migration's tables and its record.
    ws = Workspace(tmp_path)
    assert ws.cli("migrate").returncode == 0
    names = _migration_names()
    ws.sql("DELETE FROM tortoise_migrations WHERE name >= ?", (names[1],))
    done = ws.cli("check")
    assert done.returncode == 0, done.stderr
    assert f"half-migrated (models.{names[1]}" in done.stderr
    assert f"repaired migration models.{names[1]}" in done.stderr
    _assert_whole(ws)
    # and a later start says nothing more about it
    assert "half-migrated" not in ws.cli("check").stderr


def test_check_with_a_database_it_cannot_use_says_why_and_creates_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    (tmp_path / "garbage.db").write_text("not a database\n")
    cases = {
        f"sqlite://{tmp_path}/missing/dir/x.db": "no database at",
        "sqlite://:memory:": "in-memory",
        "mysql://x": "unsupported database URL",
        "postgresql://postgres@127.0.0.1:1/nothing": "cannot reach the PostgreSQL database at 127.0.0.1:1/nothing",
        f"sqlite://{tmp_path}/garbage.db": "file is not a database",
    }
    for url, reason in cases.items():
        done = ws.cli("check", "--db", url)
        assert done.returncode == 1, (url, done.stdout, done.stderr)
        assert reason in done.stderr, (url, done.stderr)
        assert "Traceback" not in done.stderr, (url, done.stderr)
        assert "no problems" not in done.stdout
    assert not (tmp_path / "missing").exists()


@pytest.mark.sqlite_only
def test_a_migrate_killed_while_it_writes_leaves_a_database_that_opens(tmp_path: Path) -> None:
    for cycle in range(1, 4):  # after the first, second, third migration or so
        ws = Workspace(tmp_path / f"kill-{cycle}")
        wal = Path(f"{ws.db_path}-wal")
        proc = subprocess.Popen([sys.executable, "main.py", "migrate"], cwd=ROOT, env=ws.env)
        try:
            deadline = time.monotonic() + 60
            # Killed once it has written a little more each cycle: inside one migration or another.
            while proc.poll() is None and time.monotonic() < deadline:
                if wal.exists() and wal.stat().st_size > cycle * 40_000:
                    break
                time.sleep(0.001)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        _assert_whole(ws)
