"""Migration 0006 on a database that already holds runs (the template database is migrated empty): rows
survive, existing steps get no retries, the steps' unique key and the attempts stay."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from tortoise import Tortoise
from tortoise.migrations.api import migrate

from models.db import tortoise_config


async def _migrate(url: str, target: str | None = None) -> None:
    try:
        await migrate(config=tortoise_config(url), target=target)
    finally:
        await Tortoise.close_connections()


async def test_0006_upgrades_a_database_with_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite://{path}"
    await _migrate(url, "models.0005_read_indexes")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "INSERT INTO runs (workflow, definition, inputs, status, actor, recoveries, created_at, updated_at)"
            " VALUES ('w', '{}', '{}', 'completed', 't', 0, '2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00')"
        )
        conn.execute(
            "INSERT INTO steps (run_id, key, label, position, kind, needs, status, attempt, stale, updated_at)"
            " VALUES (1, 'a', 'A', 0, 'python', '[]', 'completed', 1, 0, '2026-01-01 00:00:00+00:00')"
        )
        conn.execute(
            "INSERT INTO attempts (run_id, step_id, number, status, consumed, logs, started_at)"
            " VALUES (1, 1, 1, 'completed', '{}', '[]', '2026-01-01 00:00:00+00:00')"
        )
    await _migrate(url)
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        step = dict(conn.execute("SELECT * FROM steps").fetchone())
        assert (step["key"], step["status"], step["retries"], step["retries_used"], step["retry_at"]) == (
            "a",
            "completed",
            0,
            0,
            None,
        )
        assert conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 1
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):  # the steps' (run, key) key is kept
            conn.execute(
                "INSERT INTO steps (run_id, key, label, position, kind, needs, status, attempt, stale, updated_at)"
                " VALUES (1, 'a', 'A', 1, 'python', '[]', 'pending', 0, 0, '2026-01-01 00:00:00+00:00')"
            )
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {
            "notifications",
            "deliveries",
        }
