"""LLM truncation through the retry policy, against the loopback model server (20 tokens a reply): an
output cut off at max_tokens is retried with max_tokens raised by `retry_max_tokens_factor`, under
`warn` as under `fail`; each cut writes a `step.truncated` notification."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from engine.engine import Engine
from engine.registry import Registry
from engine.store import fetch
from tests.conftest import attempts_of
from tests.integration.test_llm import TOPIC, eng, llm, llm_settings, run_to_end, server, words

Define = Callable[..., Any]
__all__ = ["eng", "llm_settings", "server"]  # the fixtures, shared with test_llm

pytestmark = pytest.mark.usefixtures("audit_clean")
RETRY: dict[str, Any] = {"retries": 2, "retry_delay_s": 0, "retry_on": ["truncated"], "retry_max_tokens_factor": 2}


@pytest.mark.parametrize("policy", ["warn", "fail"])
async def test_a_cut_output_is_retried_with_a_higher_limit_until_it_fits(
    eng: Engine, define: Define, policy: str, registry: Registry
) -> None:
    define("cut-retry", [llm(max_tokens=5, on_truncation=policy, **RETRY)], inputs=TOPIC)
    run = await run_to_end(registry.get("cut-retry"))
    assert run["status"] == "completed", run["error"]
    step = run["steps"][0]
    assert (step["output"], step["truncated"], step["max_tokens"]) == (words(0, 20), False, 20)
    attempts = await attempts_of(run["id"], "write")
    assert [(a["status"], a["max_tokens"], a["truncated"]) for a in attempts] == [
        ("failed", 5, True),
        ("failed", 10, True),
        ("completed", 20, False),
    ]
    assert [a["partial_output"] for a in attempts[:2]] == [words(0, 5), words(0, 10)]
    rows = await fetch("SELECT event, step_key, step_status FROM notifications WHERE run_id = ?", (run["id"],))
    cut = [(r["event"], r["step_key"], r["step_status"]) for r in rows if r["event"] == "step.truncated"]
    assert cut == [("step.truncated", "write", "retrying")] * 2


async def test_the_last_attempt_follows_on_truncation_when_retries_are_spent(
    eng: Engine, define: Define, registry: Registry
) -> None:
    define("cut-spent", [llm(max_tokens=5, **{**RETRY, "retries": 1, "retry_max_tokens_factor": 1})], inputs=TOPIC)
    run = await run_to_end(registry.get("cut-spent"))
    assert run["status"] == "completed"  # warn keeps the cut output of the last attempt
    attempts = await attempts_of(run["id"], "write")
    assert [(a["status"], a["max_tokens"]) for a in attempts] == [("failed", 5), ("completed", 5)]
    assert attempts[0]["error"] == "the output was cut off at the token limit (max_tokens=5)"
    assert run["steps"][0]["truncated"] is True


async def test_truncation_is_not_retried_unless_listed(eng: Engine, define: Define, registry: Registry) -> None:
    define("cut-plain", [llm(max_tokens=5, retries=2, retry_delay_s=0)], inputs=TOPIC)
    run = await run_to_end(registry.get("cut-plain"))
    assert run["status"] == "completed" and run["steps"][0]["truncated"] is True
    assert len(await attempts_of(run["id"], "write")) == 1
