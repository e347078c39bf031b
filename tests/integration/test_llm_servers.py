"""LLM steps against servers that behave like the real ones (issue 14): the loopback server
(tests/llm_server.py) set up as llama-cpp-python (no usage in streams, `n` ignored, a running stream
cut when another request queues, any model name echoed) or llama.cpp's `llama-server` (usage per
choice, `max_tokens` capped at the context size), with the real `openai` client, a real SQLite file and
a running engine."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from engine import operations
from engine.db import current
from engine.definitions import WorkflowDef
from engine.engine import Engine
from engine.hub import Subscription
from engine.llm import providers
from engine.llm.model_check import model_warnings
from engine.registry import Registry
from engine.settings import Settings
from engine.store import fetch
from tests.conftest import api_client, attempts_of, engine_running, wait_for, wait_run
from tests.integration import test_llm
from tests.integration.test_llm import (
    ENDED,
    MODEL,
    TOPIC,
    bodies,
    llm,
    llm_engine,
    pointed_at,
    start_streaming,
    unreachable_base_url,
    words,
)
from tests.llm_server import LLMServer

Define = Callable[..., Any]

# The loopback server, the settings pointing at it and the started engine are the other LLM tests' own fixtures
# (a server whose 401 may quote the key behaves like the plain one until a test asks it to refuse the key).
server, llm_settings, eng = test_llm.server, test_llm.llm_settings, test_llm.eng

pytestmark = pytest.mark.usefixtures("audit_clean")


async def run_to_end(defn: WorkflowDef) -> dict[str, Any]:
    """A run of `defn` with no inputs, to its end: within 20 s, as these servers' one-at-a-time answers take longer."""
    return await test_llm.run_to_end(defn, timeout_s=20.0)


# --- 1. a stream that ends without a finish reason -------------------------------------------------------


async def test_a_stream_cut_without_a_finish_reason_is_retried_and_the_step_completes(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.fail_next("cut")  # a role chunk, then [DONE]
    define("cut-once", [llm()], inputs=TOPIC)
    run = await run_to_end(registry.get("cut-once"))
    assert run["status"] == "completed", run["error"]
    step = run["steps"][0]
    assert step["output"] == words(0, 20)
    assert step["finish_reason"] == "stop"
    assert len(server.completion_requests) == 2
    assert any("ended without a finish reason" in line and "retry 1 of 3" in line for line in step["logs"])


async def test_a_stream_cut_on_every_try_fails_the_step_with_a_clear_message_and_lists_the_call(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.fail_next("cut", "cut", "cut", "cut")
    define("cut-always", [llm()], inputs=TOPIC)
    run = await run_to_end(registry.get("cut-always"))
    assert run["status"] == "failed"
    step = run["steps"][0]
    assert "ended without a finish reason" in step["error"]
    assert "the server cut it short (gave up after 4 tries)" in step["error"]
    [attempt] = await attempts_of(run["id"], "write")
    [call] = attempt["llm"]["calls"]
    assert call["retries"] == 3
    assert "gave up after 4 tries" in call["error"]


async def test_missing_alternatives_go_one_at_a_time_to_a_server_that_ignores_n_and_cuts_streams(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    # llama-cpp-python: `n` ignored, and a running stream cut when another request queues.
    server.support_n, server.cut_on_queue, server.chunk_delay_s, server.reply_tokens = False, True, 0.01, 5
    define("alts-llama-cpp", [llm(alternatives=3, select="auto")], inputs=TOPIC)
    run = await run_to_end(registry.get("alts-llama-cpp"))
    assert run["status"] == "completed", run["error"]
    step = run["steps"][0]
    assert step["alternatives"] == [words(0, 5)] * 3
    assert [a["finish_reason"] for a in step["llm"]["alternatives"]] == ["stop"] * 3
    assert [b.get("n") for b in bodies(server)] == [3, None, None]
    assert (server.cut, server.max_streaming) == (0, 1)


async def test_parallel_requests_lets_a_step_ask_for_its_missing_alternatives_at_once(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.support_n, server.chunk_delay_s, server.reply_tokens = False, 0.05, 10
    define("alts-parallel", [llm(alternatives=3, select="auto", parallel_requests=2)], inputs=TOPIC)
    run = await run_to_end(registry.get("alts-parallel"))
    assert run["status"] == "completed", run["error"]
    assert run["steps"][0]["alternatives"] == [words(0, 10)] * 3
    assert server.max_streaming == 2


# --- 2. usage the server does not report -----------------------------------------------------------------


async def test_usage_missing_from_the_stream_is_estimated_never_zero_and_marked(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.stream_usage = "none"  # llama-cpp-python sends no usage in streams, even when asked
    define("no-usage", [llm()], inputs=TOPIC)
    run = await run_to_end(registry.get("no-usage"))
    assert run["status"] == "completed", run["error"]
    usage = run["steps"][0]["usage"]
    assert usage["estimated"] is True
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] >= 20
    [row] = await fetch(
        "SELECT prompt_tokens, completion_tokens, estimated FROM llm_usage WHERE run_id = ?", (run["id"],)
    )
    assert row["prompt_tokens"] > 0
    assert row["estimated"] == 1


async def test_a_server_that_refuses_stream_options_is_asked_without_them_from_then_on(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.refuse_stream_options = True
    define("no-stream-options", [llm()], inputs=TOPIC)
    first = await run_to_end(registry.get("no-stream-options"))
    second = await run_to_end(registry.get("no-stream-options"))
    assert (first["status"], second["status"]) == ("completed", "completed"), first["error"]
    assert ["stream_options" in b for b in bodies(server)] == [True, False, False]
    assert first["steps"][0]["usage"]["estimated"] is True
    assert first["steps"][0]["usage"]["prompt_tokens"] > 0


async def test_usage_reported_in_the_stream_is_exact_and_not_marked(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    define("usage-end", [llm()], inputs=TOPIC)
    run = await run_to_end(registry.get("usage-end"))
    usage = run["steps"][0]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["estimated"]) == (4, 20, False)
    assert bodies(server)[0]["stream_options"] == {"include_usage": True}


# --- 3. usage per choice --------------------------------------------------------------------------------


async def test_one_usage_record_per_choice_is_summed_and_attributed(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.stream_usage, server.reply_tokens = "per_choice", 5  # llama-server with n: one record per choice
    define("usage-per-choice", [llm(alternatives=3, select="auto")], inputs=TOPIC)
    run = await run_to_end(registry.get("usage-per-choice"))
    assert run["status"] == "completed", run["error"]
    step = run["steps"][0]
    assert step["usage"]["completion_tokens"] == 15
    assert step["usage"]["estimated"] is False
    alternatives = step["llm"]["alternatives"]
    assert [(a["completion_tokens"], a["prompt_tokens"], a["exact"]) for a in alternatives] == [(5, 4, True)] * 3
    rows = await fetch("SELECT completion_tokens FROM llm_usage WHERE run_id = ? ORDER BY alternative", (run["id"],))
    assert [r["completion_tokens"] for r in rows] == [5, 5, 5]


# --- 4. `n` turned off only by an error about `n` ----------------------------------------------------------


async def test_an_unrelated_400_does_not_turn_n_off(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.strict_models = True
    define("wrong-model", [llm(alternatives=3, select="auto", model="no-such-model")], inputs=TOPIC)
    define("right-model", [llm(alternatives=3, select="auto")], inputs=TOPIC)
    wrong = await run_to_end(registry.get("wrong-model"))
    assert wrong["status"] == "failed"
    assert "model 'no-such-model' not found" in wrong["steps"][0]["error"]
    assert [b.get("n") for b in bodies(server)] == [3]  # not asked again one by one
    server.reset()
    right = await run_to_end(registry.get("right-model"))
    assert right["status"] == "completed", right["error"]
    assert [b.get("n") for b in bodies(server)] == [3]


async def test_a_refusal_of_n_is_remembered_for_that_model_only(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.refuse_n, server.models = True, (MODEL, "other")
    define("refused-n", [llm(alternatives=2, select="auto")], inputs=TOPIC)
    define("other-model", [llm(alternatives=2, select="auto", model="other")], inputs=TOPIC)
    assert (await run_to_end(registry.get("refused-n")))["status"] == "completed"
    assert [b.get("n") for b in bodies(server)] == [2, None, None]
    server.reset()
    assert (await run_to_end(registry.get("refused-n")))["status"] == "completed"
    assert [b.get("n") for b in bodies(server)] == [None, None]  # learnt: straight to one per alternative
    server.reset()
    assert (await run_to_end(registry.get("other-model")))["status"] == "completed"
    assert [b.get("n") for b in bodies(server)] == [2, None, None]  # another model is asked with n first


# --- 5. failed and cancelled calls in the attempt's calls --------------------------------------------------


async def test_a_call_that_fails_after_its_retries_is_listed_in_the_attempts_calls(
    settings: Settings, define: Define, registry: Registry
) -> None:
    dead = pointed_at(settings, unreachable_base_url(), llm_retry_base_s=0.01)
    async with llm_engine(dead, registry):
        define("dead", [llm()], inputs=TOPIC)
        run = await run_to_end(registry.get("dead"))
    assert run["status"] == "failed"
    [attempt] = await attempts_of(run["id"], "write")
    [call] = attempt["llm"]["calls"]
    assert call["retries"] == 3
    assert "cannot reach the model endpoint" in call["error"]
    assert call["latency_ms"] > 0
    assert call["alternatives"] == [0]


async def test_a_cancelled_call_is_recorded_with_its_real_latency_and_first_token(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    run_id = await start_streaming(server, define, registry, "cancel-mid", 2000, 0.01)

    async def streamed() -> bool:  # the checkpointed text: at least 5 tokens have arrived
        return (len(server.completion_requests) > 0) and len(await streamed_text()) >= 5

    async def streamed_text() -> list[str]:
        [attempt] = await attempts_of(run_id, "write")
        return str(attempt.get("partial_output") or "").split()

    await wait_for(streamed, timeout_s=20)
    await operations.cancel_run(run_id, "tester")
    await wait_run(run_id, "cancelled")

    async def kept() -> list[dict[str, Any]]:  # the stopped step keeps its record just after the cancel
        [attempt] = await attempts_of(run_id, "write")
        return list((attempt["llm"] or {}).get("calls") or [])

    [call] = await wait_for(kept, timeout_s=10, what="the cancelled call's record")
    assert call["error"] == "cancelled"
    assert call["latency_ms"] > 0
    assert call["first_token_ms"] is not None
    assert call["completion_tokens"] >= 5


# --- 6. the context window ----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["props", "models"])
async def test_max_tokens_is_clamped_to_the_context_window_and_the_truncation_names_it(
    eng: Engine, server: LLMServer, define: Define, via: Literal["props", "models"], registry: Registry
) -> None:
    server.context_size, server.context_via, server.reply_tokens = 64, via, 500
    define("ctx", [llm(on_truncation="fail")], inputs=TOPIC)  # no max_tokens: 16,384 by default
    run = await run_to_end(registry.get("ctx"))
    assert run["status"] == "failed"
    step = run["steps"][0]
    [body] = bodies(server)
    assert body["max_tokens"] < 64
    assert step["llm"]["context_length"] == 64
    assert step["llm"]["requested_max_tokens"] == 16384
    assert step["max_tokens"] == body["max_tokens"]
    assert "cut off at the token limit (the model's context window (64 tokens;" in step["error"]
    assert any("max_tokens=16384 does not fit the model's context window (64 tokens" in line for line in step["logs"])


async def test_a_server_that_tells_no_context_window_gets_max_tokens_as_set(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.list_models = False
    define("no-ctx", [llm(max_tokens=5, on_truncation="fail")], inputs=TOPIC)
    run = await run_to_end(registry.get("no-ctx"))
    assert run["steps"][0]["error"].startswith(
        "TruncatedOutput: the output was cut off at the token limit (max_tokens=5, finish_reason 'length')"
    )
    assert run["steps"][0]["llm"]["context_length"] is None


# --- cost ------------------------------------------------------------------------------------------------


async def test_cost_per_alternative_attempt_step_and_run_in_the_api(
    settings: Settings, server: LLMServer, define: Define, tmp_path: Path, registry: Registry
) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  stepdeck-test: {prompt: 2.0, completion: 10.0}\n")
    priced = pointed_at(settings, server.base_url, llm_prices=str(prices))
    server.reply_tokens = 5
    async with llm_engine(priced, registry), api_client(priced, registry) as api:
        define("priced", [llm("a", alternatives=2, select="auto"), llm("b", max_tokens=3)], inputs=TOPIC)
        created = await api.post("/api/runs", json={"workflow": "priced", "inputs": {}})
        run_id = created.json()["id"]
        await wait_run(run_id, *ENDED)
        run = (await api.get(f"/api/runs/{run_id}")).json()
    a, b = run["steps"]
    # a: one request, n=2: 4 prompt tokens read once, 2 x 5 completion tokens; b: 4 prompt, 3 completion
    assert [alt["cost"] for alt in a["llm"]["alternatives"]] == pytest.approx([(4 * 2 + 5 * 10) / 1e6, 50 / 1e6])
    assert a["llm"]["cost"] == pytest.approx((4 * 2 + 10 * 10) / 1e6)
    assert a["cost"] == {"usd": pytest.approx(a["llm"]["cost"]), "estimated": False}
    assert b["cost"]["usd"] == pytest.approx((4 * 2 + 3 * 10) / 1e6)
    assert run["cost"] == {"usd": pytest.approx(a["cost"]["usd"] + b["cost"]["usd"]), "estimated": False}
    rows = await fetch("SELECT cost, estimated FROM llm_usage WHERE run_id = ? ORDER BY id", (run_id,))
    assert sum(r["cost"] for r in rows) == pytest.approx(run["cost"]["usd"])


async def test_a_model_without_a_price_has_no_cost_not_a_zero_one(
    eng: Engine, define: Define, registry: Registry
) -> None:
    define("unpriced", [llm()], inputs=TOPIC)
    run = await run_to_end(registry.get("unpriced"))
    assert run["steps"][0]["llm"]["cost"] is None
    assert run["steps"][0]["cost"] == {"usd": None, "estimated": False}
    assert run["cost"] == {"usd": None, "estimated": False}


# --- request limits per endpoint ---------------------------------------------------------------------------


async def test_the_endpoints_concurrency_limit_holds_across_runs(
    settings: Settings, server: LLMServer, define: Define, registry: Registry
) -> None:
    limited = pointed_at(settings, server.base_url, llm_max_concurrent=2)
    server.reply_tokens, server.chunk_delay_s = 10, 0.02
    async with llm_engine(limited, registry), api_client(limited, registry) as api:
        define("crowd", [llm()], inputs=TOPIC)
        ids = [(await api.post("/api/runs", json={"workflow": "crowd", "inputs": {}})).json()["id"] for _ in range(6)]
        statuses = [await wait_run(i, *ENDED, timeout_s=30) for i in ids]
        runs = [(await api.get(f"/api/runs/{i}")).json() for i in ids]
    assert statuses == ["completed"] * 6
    assert all(r["steps"][0]["output"] == words(0, 10) for r in runs)
    assert server.max_streaming == 2  # never more, and the limit was reached: six runs wanted six at once
    waited = [line for r in runs for line in r["steps"][0]["logs"] if "request limits" in line]
    assert waited and all(line.endswith("requests in flight (the limit is 2)") for line in waited), waited


async def test_a_request_past_the_per_minute_limit_waits_and_says_why(
    settings: Settings, server: LLMServer, define: Define, registry: Registry
) -> None:
    limited = pointed_at(settings, server.base_url, llm_requests_per_minute=2)
    server.reply_tokens = 3
    await asyncio.to_thread(importlib.import_module, "openai")
    sub = current().hub.subscribe()
    try:
        async with engine_running(limited, registry), api_client(limited, registry) as api:
            define("rpm", [llm()], inputs=TOPIC)
            ids = [(await api.post("/api/runs", json={"workflow": "rpm", "inputs": {}})).json()["id"] for _ in range(3)]
            held = await wait_for(lambda: held_back(sub), timeout_s=20, what="a request held back")
            others = [i for i in ids if i != held]
            assert [await wait_run(i, *ENDED) for i in others] == ["completed", "completed"]
            assert len(server.completion_requests) == 2
            assert (await api.post(f"/api/runs/{held}/cancel")).status_code == 200
            await wait_run(held, "cancelled")
            line = "waiting for the endpoint's request limits: 2 requests started in the last minute (the limit)"

            async def logged() -> bool:  # the stopped step's logs are kept just after the cancel
                return line in (await api.get(f"/api/runs/{held}")).json()["steps"][0]["logs"]

            await wait_for(logged, timeout_s=10, what="the held step's logs")
    finally:
        sub.close()
    assert len(server.completion_requests) == 2


async def held_back(sub: Subscription) -> int | None:
    """The run whose step logged that it waits for the request limits, if one did."""
    while (change := await sub.get(timeout_s=0.05)) is not None:
        if change.kind == "log" and "request limits" in str(change.to_json().get("line")):
            return change.run_id
    return None


# --- 7. model names checked against the endpoint's list -----------------------------------------------------


async def test_a_model_the_endpoint_does_not_list_is_warned_about_at_start_and_still_runs(
    llm_settings: Settings, server: LLMServer, define: Define, caplog: pytest.LogCaptureFixture, registry: Registry
) -> None:
    define("typo", [llm(model="stepdeck-tset")], inputs=TOPIC)  # llama-cpp-python answers to any name
    define("fine", [llm()], inputs=TOPIC)
    async with llm_engine(llm_settings, registry):
        await wait_for(
            lambda: _logged(caplog, "workflow typo: step 'write': model 'stepdeck-tset' is not among the models"),
            what="the warning",
        )
        run = await run_to_end(registry.get("typo"))
    assert run["status"] == "completed", run["error"]  # a warning, never a refusal
    assert bodies(server)[0]["model"] == "stepdeck-tset"
    assert not any("workflow fine:" in r.getMessage() for r in caplog.records)
    assert any(r.path == "/v1/models" for r in server.requests)


async def test_no_warning_where_the_endpoint_lists_no_models(
    llm_settings: Settings, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.list_models = False
    define("typo", [llm(model="stepdeck-tset")], inputs=TOPIC)
    await asyncio.to_thread(importlib.import_module, "openai")
    clients = providers.Providers()
    try:
        found = await model_warnings(llm_settings, [registry.get("typo")], clients)
    finally:
        await clients.close()  # the test owns these clients, as an engine or a dashboard owns its own
    assert found == {}
    assert [r.path for r in server.requests] == ["/v1/models"]


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


# --- the budget guard ------------------------------------------------------------------------------------------


def priced_settings(settings: Settings, server: LLMServer, tmp_path: Path, **extra: Any) -> Settings:
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."stepdeck-test"]\nprompt = 10.0\ncompletion = 10.0\n')  # 24 tokens: $0.00024
    return pointed_at(settings, server.base_url, llm_prices=str(prices), **extra)


async def test_a_step_past_the_runs_max_cost_waits_for_a_person_who_can_let_it_run(
    settings: Settings, server: LLMServer, define: Define, tmp_path: Path, registry: Registry
) -> None:
    priced = priced_settings(settings, server, tmp_path)
    async with llm_engine(priced, registry), api_client(priced, registry) as api:
        define("capped", [llm("a"), llm("b"), llm("c")], inputs=TOPIC, max_cost=0.0002)
        run_id = (await api.post("/api/runs", json={"workflow": "capped", "inputs": {}})).json()["id"]
        assert await wait_run(run_id, *ENDED) == "waiting"
        run = (await api.get(f"/api/runs/{run_id}")).json()
        a, b, c = run["steps"]
        assert (a["status"], b["status"], c["status"]) == ("completed", "waiting", "pending")
        reason = "budget reached: $0.0002 of $0.0002 (max_cost of this run)"
        assert b["llm"]["budget_hold"] == {"scope": "run", "spent": pytest.approx(0.00024), "limit": 0.0002}
        assert any(line.startswith(reason) for line in b["logs"]), b["logs"]
        assert (b["alternatives"], b["output"], run["needs_choice"]) == ([], None, ["b"])
        assert len(server.completion_requests) == 1  # b never called the model
        # A person resumes b: it runs past the budget; c, the next step, is held in turn.
        assert (await api.post(f"/api/runs/{run_id}/steps/b/rerun")).status_code == 200
        assert await wait_run(run_id, *ENDED) == "waiting"
        run = (await api.get(f"/api/runs/{run_id}")).json()
    a, b, c = run["steps"]
    assert (b["status"], b["attempt"], c["status"]) == ("completed", 2, "waiting")
    assert any("running past it, as a person resumed this step" in line for line in b["logs"])
    assert c["llm"]["budget_hold"]["spent"] == pytest.approx(0.00048)
    assert len(server.completion_requests) == 2


async def test_a_step_past_the_daily_budget_waits_and_a_run_within_it_does_not(
    settings: Settings, server: LLMServer, define: Define, tmp_path: Path, registry: Registry
) -> None:
    priced = priced_settings(settings, server, tmp_path, llm_daily_budget=0.0003)
    async with llm_engine(priced, registry), api_client(priced, registry) as api:
        define("daily", [llm()], inputs=TOPIC)
        first = (await api.post("/api/runs", json={"workflow": "daily", "inputs": {}})).json()["id"]
        second_status = third_status = None
        assert await wait_run(first, *ENDED) == "completed"  # $0.00024 of $0.0003
        second = (await api.post("/api/runs", json={"workflow": "daily", "inputs": {}})).json()["id"]
        second_status = await wait_run(second, *ENDED)  # starts at $0.00024: still room
        third = (await api.post("/api/runs", json={"workflow": "daily", "inputs": {}})).json()["id"]
        third_status = await wait_run(third, *ENDED)
        held = (await api.get(f"/api/runs/{third}")).json()["steps"][0]
    assert (second_status, third_status) == ("completed", "waiting")
    assert any(
        line.startswith("daily budget reached: $0.0005 of $0.0003 (STEPDECK_LLM_DAILY_BUDGET)") for line in held["logs"]
    )
    assert len(server.completion_requests) == 2


# --- 8. the model clients belong to the engine ---------------------------------------------------------------


async def test_an_engine_closes_its_model_clients_when_it_stops_and_the_next_engine_makes_its_own(
    llm_settings: Settings, server: LLMServer, define: Define, registry: Registry
) -> None:
    define("owned", [llm()], inputs=TOPIC)
    for _ in range(2):  # the second engine, on the same loop, finds nothing of the first one's clients
        async with llm_engine(llm_settings, registry):
            assert (await run_to_end(registry.get("owned")))["status"] == "completed"
            assert server.open_connections > 0  # kept alive for the engine's next call

        async def closed() -> bool:
            return server.open_connections == 0

        await wait_for(closed, what="the stopped engine's connections to the endpoint to close")
    assert len(server.completion_requests) == 2
