"""engine/orphans.py, pure parts: when is an owner dead, and why is a run an orphan."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.orphans import orphan_reason, owner_is_dead

HOST = socket.gethostname()
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
ME = f"{HOST}:{os.getpid()}:mine"


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def row(owner: str | None, beat: Any) -> dict[str, Any]:
    return {"owner": owner, "heartbeat_at": beat}


# --- owner_is_dead ---------------------------------------------------------------------------------


def test_a_missing_owner_is_dead() -> None:
    assert owner_is_dead(None) is True
    assert owner_is_dead("") is True


def test_a_process_on_this_host_that_exited_is_dead(dead_pid: int) -> None:
    assert owner_is_dead(f"{HOST}:{dead_pid}:boot") is True
    assert owner_is_dead(f"box:{dead_pid}:boot", host="box") is True


def test_a_live_process_on_this_host_is_alive() -> None:
    assert owner_is_dead(f"{HOST}:{os.getppid()}:boot") is False
    assert owner_is_dead(f"{HOST}:{os.getpid()}:other-boot") is False  # this process: the caller decides


def test_an_owner_on_another_host_is_never_declared_dead_by_pid(dead_pid: int) -> None:
    assert owner_is_dead(f"other-{HOST}:{dead_pid}:boot") is False
    assert owner_is_dead(f"{HOST}:{dead_pid}:boot", host=f"other-{HOST}") is False


@pytest.mark.parametrize("owner", ["justahost", f"{HOST}:notapid:boot"])
def test_an_owner_that_cannot_be_parsed_is_not_declared_dead(owner: str) -> None:
    assert owner_is_dead(owner) is False


# --- orphan_reason ---------------------------------------------------------------------------------


def test_a_run_this_engine_still_beats_is_not_an_orphan(dead_pid: int) -> None:
    assert orphan_reason(row(ME, NOW - timedelta(seconds=5)), ["a"], ME, NOW, 120) is None


def test_a_run_of_this_engine_that_stopped_beating_lost_its_driver() -> None:
    # The engine beats every run it drives: its own stale run has no driver left.
    reason = orphan_reason(row(ME, NOW - timedelta(days=1)), ["a"], ME, NOW, 120)
    assert reason is not None
    assert "driver in this engine stopped" in reason


def test_a_run_of_a_dead_process_on_this_host_is_an_orphan_at_once(dead_pid: int) -> None:
    owner = f"{HOST}:{dead_pid}:old"
    fresh = NOW - timedelta(seconds=1)
    reason = orphan_reason(row(owner, fresh), ["draft"], ME, NOW, 120)
    assert reason == (
        f"interrupted: the server stopped while step 'draft' was running; last heartbeat 2026-03-01 11:59:59 UTC"
        f" from {owner}"
    )


def test_a_run_of_an_earlier_boot_of_this_very_process_is_an_orphan() -> None:
    owner = f"{HOST}:{os.getpid()}:previous"
    reason = orphan_reason(row(owner, NOW), [], ME, NOW, 120)
    assert reason is not None
    assert reason.startswith("interrupted: the server stopped; last heartbeat 2026-03-01 12:00:00 UTC")


def test_a_fresh_heartbeat_from_another_host_is_not_an_orphan() -> None:
    owner = "elsewhere:4242:abcd"
    assert orphan_reason(row(owner, NOW - timedelta(seconds=5)), ["a"], ME, NOW, 120) is None
    assert orphan_reason(row(owner, NOW - timedelta(seconds=120)), ["a"], ME, NOW, 120) is None  # not yet *older*


def test_a_stale_heartbeat_makes_an_orphan_with_the_last_heartbeat_and_running_steps() -> None:
    owner = "elsewhere:4242:abcd"
    beat = NOW - timedelta(seconds=121)
    reason = orphan_reason(row(owner, beat), ["outline", "draft"], ME, NOW, 120)
    assert reason == (
        "interrupted: its engine stopped responding while step 'outline', 'draft' was running;"
        " last heartbeat 2026-03-01 11:57:59 UTC from elsewhere:4242:abcd, more than 120 s ago"
    )


def test_a_heartbeat_read_as_text_from_the_database_is_understood() -> None:
    owner = "elsewhere:4242:abcd"
    assert orphan_reason(row(owner, "2026-03-01 11:59:00+00:00"), [], ME, NOW, 120) is None
    reason = orphan_reason(row(owner, "2026-03-01 11:00:00+00:00"), [], ME, NOW, 120)
    assert reason is not None
    assert "last heartbeat 2026-03-01 11:00:00 UTC" in reason


def test_no_heartbeat_at_all_is_an_orphan() -> None:
    reason = orphan_reason(row("elsewhere:1:x", None), ["a"], ME, NOW, 120)
    assert reason is not None
    assert "no heartbeat from elsewhere:1:x" in reason
    assert "'a'" in reason


def test_a_running_run_without_owner_is_an_orphan() -> None:
    reason = orphan_reason(row(None, NOW), [], ME, NOW, 120)
    assert reason is not None
    assert reason.startswith("interrupted: the server stopped")
    assert "an unknown owner" in reason
