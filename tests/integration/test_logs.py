"""Log lines tell a run's story: every record logged while the engine works on a run carries the run, the
worker (engine owner), and within a step its key and attempt; modules log in the `stepdeck.*` namespace."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine import logs, operations
from engine.engine import Engine
from engine.registry import Registry
from tests.conftest import run_to_end, wait_run

Define = Callable[..., Any]
ROOT = Path(__file__).resolve().parents[2]
USER = logging.getLogger("a_workflows_module")  # what a step function would use: no stepdeck name, no fields
# Engine modules whose logger is not in the namespace yet: moved when they are next changed for other reasons.
NOT_YET = ("engine/driver.py", "engine/step_runner.py", "engine/db/sqlite.py", "engine/llm/")


def sync_talker(ctx: Any) -> str:
    USER.warning("sync step %s speaking", ctx.step_key)
    return "said"


async def async_talker(ctx: Any) -> str:
    await asyncio.sleep(0)
    USER.warning("async step %s speaking", ctx.step_key)
    return "said"


def failing_talker(ctx: Any) -> str:
    USER.warning("attempt %s speaking", ctx.attempt)
    if ctx.attempt == 1:
        raise ValueError("first time")
    return "said"


def spoken(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_lines_logged_in_a_step_carry_the_run_step_attempt_and_worker(
    engine: Engine, define: Define, caplog: pytest.LogCaptureFixture, registry: Registry
) -> None:
    define(
        "talk",
        [
            {"key": "one", "call": "tests.integration.test_logs:sync_talker"},
            {"key": "two", "call": "tests.integration.test_logs:async_talker"},
        ],
    )
    with caplog.at_level(logging.WARNING, logger=USER.name):
        run_id = await run_to_end(registry.get("talk"), "completed")
    for key, kind in (("one", "sync"), ("two", "async")):
        [record] = spoken(caplog, f"{kind} step {key} speaking")
        fields = {name: getattr(record, name) for name in logs.FIELDS}
        assert fields == {"run_id": run_id, "step": key, "attempt": 1, "worker": engine.owner}
        assert record.context == f" | run={run_id} step={key} attempt=1 worker={engine.owner}"  # type: ignore[attr-defined]


async def test_a_chain_of_sync_steps_logs_each_step_under_its_own_key(
    engine: Engine, define: Define, caplog: pytest.LogCaptureFixture, registry: Registry
) -> None:
    """Sync steps after sync steps run on in the thread that committed their start: their lines still carry
    their own key, not their predecessor's."""
    keys = [f"s{i}" for i in range(6)]
    define("chain-talk", [{"key": k, "call": "tests.integration.test_logs:sync_talker"} for k in keys])
    with caplog.at_level(logging.WARNING, logger=USER.name):
        run_id = await run_to_end(registry.get("chain-talk"), "completed")
    for key in keys:
        [record] = spoken(caplog, f"sync step {key} speaking")
        assert (record.run_id, record.step, record.attempt) == (run_id, key, 1)  # type: ignore[attr-defined]


async def test_a_retried_step_logs_its_new_attempt(
    engine: Engine, define: Define, caplog: pytest.LogCaptureFixture, registry: Registry
) -> None:
    define("retry-talk", [{"key": "flaky", "call": "tests.integration.test_logs:failing_talker"}])
    with caplog.at_level(logging.WARNING, logger=USER.name):
        run_id = await run_to_end(registry.get("retry-talk"), "failed")
        await operations.rerun_from(run_id, "flaky", "alice")
        assert await wait_run(run_id, "completed", "failed") == "completed"
    attempts = {n: spoken(caplog, f"attempt {n} speaking") for n in (1, 2)}
    assert [(r.run_id, r.step, r.attempt) for n in (1, 2) for r in attempts[n]] == [  # type: ignore[attr-defined]
        (run_id, "flaky", 1),
        (run_id, "flaky", 2),
    ]


def test_fields_are_bound_for_a_block_and_shown_at_the_end_of_the_line() -> None:
    line = logs.LineFormat(logs.FORMAT)
    before = logging.LogRecord("x", logging.INFO, __file__, 1, "made before install", (), None)
    assert line.format(before).endswith("x: made before install")
    logs.install()
    outside = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "plain", (), None)
    assert line.format(outside).endswith("x: plain")  # no fields, nothing added
    with logs.bound(run_id=7, worker="h:1:b"), logs.bound(step="s"):
        inside = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "said", (), None)
    assert line.format(inside).endswith("x: said | run=7 step=s worker=h:1:b")
    assert logs.current() == {}
    with pytest.raises(ValueError, match="unknown log fields"):
        logs.bind(colour="red")


def test_engine_modules_log_in_the_stepdeck_namespace() -> None:
    outside = [
        name
        for path in sorted((ROOT / "engine").rglob("*.py"))
        if not (name := str(path.relative_to(ROOT))).startswith(NOT_YET)
        and re.search(r"logging\.getLogger\(__name__\)", path.read_text(encoding="utf-8"))
    ]
    assert outside == [], "use `log = logs.logger(__name__)` (engine/logs.py)"
    assert logs.logger("engine.engine").name == "stepdeck.engine.engine"
