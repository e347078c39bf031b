"""The pure rules of LLM calls: interrupted streams, errors about `n`, what is learnt expiring, usage
settled per choice or estimated (never 0), the context window clamp, parallel requests, request limits
and prices."""

from __future__ import annotations

import asyncio

import pytest

from engine.definitions import DefinitionError, WorkflowDef, parse_definition
from engine.llm.budget import DAY, RUN, Hold, approved, hold_for
from engine.llm.calls import (
    Call,
    Choice,
    Memory,
    about_n,
    estimate_prompt,
    interrupted,
    settle_usage,
)
from engine.llm.limits import RequestLimits
from engine.llm.prices import Price, PriceFileError, parse_prices, usd
from engine.llm.record import clamp_max_tokens, parallel_requests

MESSAGES = [{"role": "user", "content": "Write about tide pools."}]


@pytest.mark.parametrize(("reason", "cut"), [("stop", False), ("length", False), (None, True), ("abort", True)])
def test_a_choice_without_a_known_finish_reason_was_interrupted(reason: str | None, cut: bool) -> None:
    assert interrupted(Choice(0, reason)) is cut


@pytest.mark.parametrize(
    ("message", "is_about_n"),
    [
        ("'n' is not supported with this model.", True),
        ("Only n=1 is supported", True),
        ("n must be 1 when using greedy sampling", True),
        ("model 'no-such-model' not found", False),
        ("The model `gpt-5-nano` does not exist or you do not have access to it.", False),
        ("Invalid value for max_tokens: must be an integer", False),
    ],
)
def test_only_an_error_that_names_n_is_about_n(message: str, is_about_n: bool) -> None:
    assert about_n(message) is is_about_n


def test_what_was_learnt_about_an_endpoint_expires_and_is_kept_per_model() -> None:
    now = [0.0]
    memory: Memory[bool] = Memory(ttl_s=3600, clock=lambda: now[0])
    memory.set("a", False)
    assert (memory.get("a"), memory.get("b")) == (False, None)
    now[0] = 3599.0
    assert memory.get("a") is False
    now[0] = 3600.0
    assert memory.get("a") is None


def test_one_usage_record_sets_the_calls_totals() -> None:
    call = Call(n=1, max_tokens=10, choices=[Choice(0, "stop", 3, 9)])
    call.usage_records.append(({"prompt_tokens": 7, "completion_tokens": 3}, None))
    settle_usage(call, MESSAGES)
    assert (call.prompt_tokens, call.completion_tokens, call.estimated) == (7, 3, False)
    assert call.choice_tokens(call.choices[0]) == (3, True)


def test_a_usage_record_per_choice_is_attributed_in_finish_order_and_summed() -> None:
    call = Call(n=3, max_tokens=10, choices=[Choice(0, "stop", 5), Choice(1, "stop", 2), Choice(2, "stop", 8)])
    call.finished = [1, 0, 2]
    for completion in (2, 5, 8):
        call.usage_records.append(({"prompt_tokens": 4, "completion_tokens": completion}, None))
    settle_usage(call, MESSAGES)
    assert (call.prompt_tokens, call.completion_tokens) == (12, 15)
    assert [call.choice_tokens(c) for c in call.choices] == [(5, True), (2, True), (8, True)]


def test_missing_usage_is_estimated_from_the_text_and_never_zero() -> None:
    call = Call(n=1, max_tokens=10, choices=[Choice(0, "stop", chunks=3, chars=40)])
    settle_usage(call, MESSAGES)
    assert call.estimated
    assert call.prompt_tokens == estimate_prompt(MESSAGES) > 0
    assert call.completion_tokens == 10  # 40 characters, about 4 a token; more than the 3 chunks
    assert call.choice_tokens(call.choices[0]) == (10, False)
    assert estimate_prompt([{"role": "user", "content": ""}]) > 0


@pytest.mark.parametrize(
    ("requested", "context", "prompt", "expected"),
    [(16384, None, 10, 16384), (16384, 8192, 100, 8092), (100, 8192, 100, 100), (50, 40, 100, 1)],
)
def test_max_tokens_is_clamped_to_what_the_context_window_leaves(
    requested: int, context: int | None, prompt: int, expected: int
) -> None:
    assert clamp_max_tokens(requested, context, prompt) == expected


def test_separate_requests_go_one_at_a_time_to_a_server_that_ignores_n_unless_the_step_says() -> None:
    assert parallel_requests(None, False, 3) == 1
    assert parallel_requests(None, None, 3) == 3
    assert parallel_requests(None, True, 3) == 3
    assert parallel_requests(2, False, 3) == 2


async def test_request_limits_hold_concurrency_and_tell_why_a_request_waits() -> None:
    limits = RequestLimits(max_concurrent=2)
    waits: list[str] = []
    peak, running = 0, 0
    release = asyncio.Event()

    async def request() -> None:
        nonlocal peak, running
        async with limits.slot(waits.append):
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

    tasks = [asyncio.create_task(request()) for _ in range(5)]
    for _ in range(100):  # each task gets to its first wait within a few loop turns
        await asyncio.sleep(0)
    assert (limits.in_flight, running, len(waits)) == (2, 2, 3)
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2
    assert waits[0] == "2 requests in flight (the limit is 2)"


async def test_a_request_cancelled_as_a_finished_one_wakes_it_stops_waiting() -> None:
    # A stopped step must not wait on for a paid request: Python 3.11's wait_for lost this cancellation
    # (the waiter went on waiting for the minute's window, then sent its request).
    limits = RequestLimits(per_minute=1, clock=lambda: 100.0)
    release, sent = asyncio.Event(), []
    tasks: dict[str, asyncio.Task[None]] = {}

    async def request(name: str) -> None:
        async with limits.slot():
            sent.append(name)
            await release.wait()
        if name == "first":
            tasks["second"].cancel()  # in the moment its end wakes the waiting one

    tasks["first"] = asyncio.create_task(request("first"))
    tasks["second"] = asyncio.create_task(request("second"))
    for _ in range(100):  # the first is sent, the second waits for the next minute
        await asyncio.sleep(0)
    assert (sent, limits.in_flight) == (["first"], 1)
    release.set()
    await tasks["first"]
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(tasks["second"], 5)
    assert (sent, limits.in_flight) == (["first"], 0)


def test_the_per_minute_limit_waits_for_the_oldest_request_to_leave_the_window() -> None:
    now = [100.0]
    limits = RequestLimits(per_minute=2, clock=lambda: now[0])
    limits._started.extend([100.0, 130.0])
    assert limits.wait_s() == 60.0
    now[0] = 160.0
    assert limits.wait_s() == 0.0


def test_prices_from_toml_and_yaml_and_what_tokens_cost() -> None:
    toml = '[models."gpt-4o-mini"]\nprompt = 0.15\ncompletion = 0.6\n'
    yaml = "models:\n  gpt-4o-mini: {prompt: 0.15, completion: 0.6}\n"
    assert parse_prices(toml, "p.toml") == parse_prices(yaml, "p.yaml") == {"gpt-4o-mini": Price(0.15, 0.6)}
    assert Price(0.15, 0.6).cost(1_000_000, 500_000) == pytest.approx(0.45)
    assert (usd(0.45), usd(0.45, estimated=True), usd(12.5), usd(None)) == ("$0.4500", "~$0.4500", "$12.50", "no price")


@pytest.mark.parametrize(
    "text",
    ["models: 3", "models:\n  m: {prompt: -1, completion: 1}", "models:\n  m: {prompt: 1, cost: 2}", "models: [1"],
)
def test_a_bad_price_file_is_refused_naming_the_file(text: str) -> None:
    with pytest.raises(PriceFileError, match=r"STEPDECK_LLM_PRICES: prices\.yaml"):
        parse_prices(text, "prices.yaml")


def test_the_budget_guard_holds_past_the_runs_max_cost_first_then_the_days_budget() -> None:
    assert hold_for(4.93, 4.93, 5.0, 0.0) is None
    assert hold_for(5.0, 5.0, 5.0, 0.0) == Hold(RUN, 5.0, 5.0)
    assert hold_for(1.0, 7.0, 5.0, 6.0) == Hold(DAY, 7.0, 6.0)
    assert hold_for(9.0, 9.0, None, 0.0) is None
    assert Hold(RUN, 4.93, 4.5).reason == "budget reached: $4.93 of $4.50 (max_cost of this run)"
    assert Hold(DAY, 0.5, 0.25).reason == "daily budget reached: $0.5000 of $0.2500 (STEPDECK_LLM_DAILY_BUDGET)"


def test_a_resumed_step_runs_past_the_budget_only_if_nothing_was_spent_since_it_was_held() -> None:
    hold = Hold(RUN, 5.2, 5.0)
    assert approved(hold, {"scope": "run", "spent": 5.2, "limit": 5.0})
    assert not approved(hold, {"scope": "run", "spent": 5.1, "limit": 5.0})
    assert not approved(hold, {"scope": "day", "spent": 5.2, "limit": 5.0})
    assert not approved(hold, None)


@pytest.mark.parametrize("value", [0, -1, "5", True, float("inf")])
def test_a_bad_max_cost_is_refused_by_the_loader(value: object) -> None:
    steps = [{"key": "a", "kind": "llm", "prompt": "hi"}]
    with pytest.raises(DefinitionError, match="max_cost"):
        parse_definition({"name": "w", "max_cost": value, "steps": steps}, "<test>")
    defn = parse_definition({"name": "w", "max_cost": 2.5, "steps": steps}, "<test>")
    assert WorkflowDef.from_snapshot(defn.to_snapshot()).max_cost == 2.5


@pytest.mark.parametrize("value", [0, -2, "2", True, 1.5])
def test_a_bad_parallel_requests_is_refused_by_the_loader(value: object) -> None:
    step = {"key": "a", "kind": "llm", "prompt": "hi", "alternatives": 3}
    with pytest.raises(DefinitionError, match="parallel_requests"):
        parse_definition({"name": "w", "steps": [{**step, "parallel_requests": value}]}, "<test>")
    defn = parse_definition({"name": "w", "steps": [{**step, "parallel_requests": 2}]}, "<test>")
    assert defn.step("a").config["parallel_requests"] == 2
