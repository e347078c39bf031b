"""The hub belongs to the database it carries the changes of: engines and viewers of one database hear
nothing of another opened in the same process, before or after it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import operations
from engine.db import close_database, open_database
from engine.hub import Change, ChangeKind
from engine.registry import Registry
from engine.settings import Settings
from tests import pgdb
from tests.conftest import engine_running, wait_run
from tests.dbtemplate import migrated_copy


async def test_engines_on_databases_opened_in_turn_hear_only_their_own_changes(
    tmp_path: Path, define: Callable[..., Any], registry: Registry
) -> None:
    define("one", [{"key": "a", "call": "tests.stepfns:noop"}])
    heard: dict[str, list[Change]] = {"first": [], "second": []}
    hubs = []
    for name, seen in heard.items():
        url = await pgdb.create() if pgdb.ENABLED else f"sqlite://{migrated_copy(tmp_path / f'{name}.db')}"
        database = await open_database(url)
        try:
            hubs.append(database.hub)
            database.hub.add_listener(seen.append)
            settings = Settings(db_url=url, workflows_dir=tmp_path, heartbeat_interval_s=0.2, shutdown_grace_s=0.0)
            async with engine_running(settings) as engine:
                assert engine.hub is database.hub
                run_id = await operations.start_run(registry.get("one"), {}, name)
                assert await wait_run(run_id, "completed", "failed") == "completed"
        finally:
            await close_database()
            if pgdb.ENABLED:
                await pgdb.drop_url(url)
    assert hubs[0] is not hubs[1]
    for name, seen in heard.items():
        assert {c.actor for c in seen if c.kind == ChangeKind.ACTION} == {name}
        assert [c.to_status for c in seen if c.kind == ChangeKind.RUN][-1] == "completed"
