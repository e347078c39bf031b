"""A migrated SQLite file made once per run of the suite and copied for each test that needs a database.

Applying the migrations costs about 0.4 s a database (over a second of CPU in a fresh test process, which
imports what they need); copying the result costs well under 1 ms. The copy is a real, fully migrated
file: what a test does to it is what a fresh install would see. xdist's controller names a directory
(`SHARED`) where the first of its test processes to need the template makes it, for them all.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from models.db import migrate

T = TypeVar("T")

SHARED = "STEPDECK_TEST_TEMPLATE_DIR"  # the directory of the template shared by the test processes

_lock = threading.Lock()
_template: Path | None = None


def on_own_loop(work: Callable[[], Coroutine[Any, Any, T]], thread_name: str) -> T:
    """Run `work` to its end on a new event loop in a thread of its own, and return what it returns (or raise what
    it raised): the callers, which make and drop test databases, may already run inside an event loop (async
    fixtures) that cannot be waited on from within."""
    out: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            out.append(asyncio.run(work()))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name=thread_name)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return out[0]


def share_with_workers() -> None:
    """Name a directory for the template to the test processes started later (xdist's workers): the first
    to need it makes it there, the others copy it, instead of each migrating a template of its own."""
    directory = tempfile.mkdtemp(prefix="stepdeck-template-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ[SHARED] = directory


def _build() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="stepdeck-template-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return _migrated(directory / "template.db")


def _shared(directory: Path) -> Path:
    """The template in the shared `directory`, made there first unless another process has (one at a time)."""
    path, ready = directory / "template.db", directory / "ready"
    with (directory / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or when its process dies
        if not ready.exists():  # none yet, or one whose maker died midway
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                leftover.unlink(missing_ok=True)
            _migrated(path)
            ready.touch()
    return path


def _migrated(path: Path) -> Path:
    on_own_loop(lambda: migrate(f"sqlite://{path}"), "stepdeck-template")
    # Closing the last connection checkpoints the WAL into the file: the file alone is the database.
    for suffix in ("-wal", "-shm"):
        assert not Path(f"{path}{suffix}").exists() or Path(f"{path}{suffix}").stat().st_size == 0
    return path


def template() -> Path:
    """The migrated template file (made on first use)."""
    global _template
    with _lock:
        if _template is None:
            shared = os.environ.get(SHARED)
            _template = _shared(Path(shared)) if shared and Path(shared).is_dir() else _build()
        return _template


def migrated_copy(path: Path) -> Path:
    """Put a fully migrated database file at `path` (its directory is created); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template(), path)
    return path
