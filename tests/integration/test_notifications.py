"""Notifications through the outbox to a real HTTP receiver on loopback: signed webhooks, retries while
the receiver is down or failing, no second delivery after a 2xx, per-workflow targets, Apprise."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import pytest

from engine import operations
from engine.notify.notifier import DeliveryJson, list_deliveries
from engine.registry import Registry
from engine.settings import Secret, Settings
from engine.store import fetch
from tests.conftest import engine_running, wait_for, wait_run
from tests.receiver import Receiver, event

Define = Callable[..., Any]
SECRET = "s3cret-for-signing"
TOKEN = "tok-9f8e7d6c5b4a"  # a token in the target URL: never shown

pytestmark = pytest.mark.usefixtures("audit_clean")


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    yield r
    r.stop()


def with_targets(settings: Settings, **kw: Any) -> Settings:
    return dataclasses.replace(settings, webhook_secret=Secret(SECRET), notify_retry_s=0.2, **kw)


def verify(headers: dict[str, str], raw: bytes) -> bool:
    """As a receiver verifies (the README's snippet): HMAC-SHA256 over "<timestamp>.<body>"."""
    timestamp = headers["X-Stepdeck-Timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Stepdeck-Signature"])


async def test_a_run_that_waits_for_a_choice_sends_a_signed_run_waiting(
    settings: Settings, define: Define, receiver: Receiver, registry: Registry
) -> None:
    define("pick", [{"key": "draft", "call": "tests.stepfns:alternatives", "alternatives": 2}])
    async with engine_running(with_targets(settings, webhook_urls=Secret(receiver.url(f"/hook/{TOKEN}")))):
        run_id = await operations.start_run(registry.get("pick"), {}, "tester")
        await wait_run(run_id, "waiting")
        (got,) = await receiver.until(event("run.waiting"))
        # Recorded after the answer: an engine stopped in between leaves the delivery pending, to send again.
        await wait_for(_delivered, 30, "the delivery to be recorded")
    assert verify(got.headers, got.raw)
    assert not verify({**got.headers, "X-Stepdeck-Timestamp": "1"}, got.raw)  # the timestamp is signed too
    body = got.json
    assert set(body) == {"event", "at", "run", "step", "url"}
    assert body["event"] == "run.waiting" and body["step"] is None
    assert body["run"] == {"id": run_id, "workflow": "pick", "status": "waiting", "error": None}
    assert body["url"] == f"http://127.0.0.1:8080/runs/{run_id}"
    assert got.path == f"/hook/{TOKEN}"
    (delivery,) = await list_deliveries()
    assert (delivery["status"], delivery["attempts"], delivery["response_code"]) == ("delivered", 1, 200)
    assert delivery["target"] == "http://127.0.0.1:" + str(receiver.port) + "/…"
    assert TOKEN not in str(await list_deliveries())


async def test_a_failing_receiver_is_retried_until_a_2xx_and_never_after(
    settings: Settings, define: Define, receiver: Receiver, registry: Registry
) -> None:
    define("fails", [{"key": "a", "call": "tests.stepfns:boom", "label": "Explode"}])
    receiver.codes = [500, 503]
    async with engine_running(with_targets(settings, webhook_urls=Secret(receiver.url()))) as engine:
        run_id = await operations.start_run(registry.get("fails"), {}, "tester")
        await wait_run(run_id, "failed")
        tries = await receiver.until(event("run.failed"), count=3)
        await wait_for(_delivered, 30, "the delivery to be recorded")
        # A second event goes through the same loop after it: a repeat of the first would come first.
        second = await operations.start_run(registry.get("fails"), {}, "tester")
        await wait_run(second, "failed")
        await receiver.until(lambda r: event("run.failed")(r) and r.json["run"]["id"] == second)
        await engine.wait_idle()
    first = [r for r in receiver.received(event("run.failed")) if r.json["run"]["id"] == run_id]
    assert len(first) == 3 and len({r.headers["X-Stepdeck-Delivery"] for r in first}) == 1  # one delivery, 3 tries
    assert [r.raw for r in first] == [tries[0].raw] * 3
    body = tries[0].json
    assert body["run"]["error"] == "step 'a' failed: ValueError: the step exploded"
    delivery = next(d for d in await list_deliveries() if d["run_id"] == run_id)
    assert (delivery["status"], delivery["attempts"], delivery["response_code"]) == ("delivered", 3, 200)


async def _delivered() -> bool:
    return any(d["status"] == "delivered" for d in await list_deliveries())


async def test_a_receiver_that_is_down_gets_it_once_it_is_back(
    settings: Settings, define: Define, registry: Registry
) -> None:
    define("down", [{"key": "a", "call": "tests.stepfns:boom"}])
    receiver = Receiver()  # its port is free: connections are refused
    async with engine_running(with_targets(settings, webhook_urls=Secret(receiver.url()))):
        run_id = await operations.start_run(registry.get("down"), {}, "tester")
        await wait_run(run_id, "failed")
        failed = await wait_for(_tried_and_pending, 30, "a failed try")
        assert "ConnectError" in (failed["last_error"] or "") and failed["response_code"] is None
        receiver.start()
        try:
            (got,) = await receiver.until(event("run.failed"))
            await wait_for(_delivered, 30, "the delivery to be recorded")
        finally:
            receiver.stop()
    assert got.json["run"]["id"] == run_id
    (delivery,) = await list_deliveries()
    assert delivery["status"] == "delivered" and delivery["attempts"] >= 2 and delivery["last_error"] is None


async def _tried_and_pending() -> DeliveryJson | None:
    return next((d for d in await list_deliveries() if d["attempts"] >= 1 and d["status"] == "pending"), None)


async def test_workflow_targets_choose_their_events_and_run_completed_is_opt_in(
    settings: Settings, define: Define, receiver: Receiver, registry: Registry
) -> None:
    define(
        "done",
        [{"key": "a", "call": "tests.stepfns:noop"}],
        notify=[{"url": receiver.url("/wf"), "events": ["run.completed"]}],
    )
    define("done-quietly", [{"key": "a", "call": "tests.stepfns:noop"}])
    async with engine_running(with_targets(settings, webhook_urls=Secret(receiver.url("/env")))):
        quiet = await operations.start_run(registry.get("done-quietly"), {}, "tester")
        await wait_run(quiet, "completed")
        run_id = await operations.start_run(registry.get("done"), {}, "tester")
        await wait_run(run_id, "completed")
        (got,) = await receiver.until(event("run.completed"))
    assert got.path == "/wf" and got.json["run"]["id"] == run_id
    assert receiver.received(lambda r: r.path == "/env") == []  # the env target did not opt in
    # Every transition that can notify wrote its outbox row; only wanted ones became deliveries.
    rows = await fetch("SELECT run_id, event, fanned_out FROM notifications ORDER BY id")
    assert [(r["run_id"], r["event"]) for r in rows] == [(quiet, "run.completed"), (run_id, "run.completed")]


async def test_an_apprise_target_gets_a_short_message_with_the_link(
    settings: Settings, define: Define, receiver: Receiver, registry: Registry
) -> None:
    define("chat", [{"key": "a", "call": "tests.stepfns:boom"}])
    # Apprise's json:// posts {"title", "message", ...} to a plain HTTP endpoint: our receiver.
    apprise_url = f"json://127.0.0.1:{receiver.port}/apprise"
    async with engine_running(with_targets(settings, notify_urls=Secret(apprise_url))):
        run_id = await operations.start_run(registry.get("chat"), {}, "tester")
        await wait_run(run_id, "failed")
        (got,) = await receiver.until(lambda r: r.path == "/apprise")
        await wait_for(_delivered, 30, "the delivery to be recorded")
    message = got.json
    assert message["title"] == f"Stepdeck: run {run_id} of chat failed"
    assert f"/runs/{run_id}" in message["message"] and "the step exploded" in message["message"]
    (delivery,) = await list_deliveries()
    assert (delivery["channel"], delivery["target"]) == ("apprise", "json://…")


async def test_the_budget_guards_statement_sends_budget_reached_with_its_detail(
    settings: Settings, define: Define, receiver: Receiver, registry: Registry
) -> None:
    from engine.notify.kinds import budget_reached_stmt
    from engine.records import utcnow
    from engine.store import run_batch

    define("spend", [{"key": "a", "call": "tests.stepfns:noop"}])
    async with engine_running(with_targets(settings, webhook_urls=Secret(receiver.url()))):
        run_id = await operations.start_run(registry.get("spend"), {}, "tester")
        await wait_run(run_id, "completed")
        # What the budget guard does: the statement goes in the batch of its own transition.
        await run_batch([budget_reached_stmt(run_id, utcnow(), "$5.00 of $5.00 spent this month", "a")])
        (got,) = await receiver.until(event("budget.reached"))
    body = got.json
    assert body["detail"] == "$5.00 of $5.00 spent this month"
    assert body["step"] == {"key": "a", "label": "a", "status": "completed"}
    assert verify(got.headers, got.raw)


async def test_a_target_that_never_answers_holds_up_no_run(
    settings: Settings, define: Define, registry: Registry
) -> None:
    import socket

    define("busy", [{"key": "a", "call": "tests.stepfns:boom"}])
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        hanging = with_targets(settings, webhook_urls=Secret(url), notify_timeout_s=600)
        async with engine_running(hanging) as engine:
            first = await operations.start_run(registry.get("busy"), {}, "tester")
            await wait_run(first, "failed")
            await wait_for(_sending, 10, "the first delivery to be on its way")
            # Runs go on while the delivery waits for an answer that never comes.
            later = [await operations.start_run(registry.get("busy"), {}, "tester") for _ in range(3)]
            for run_id in later:
                await wait_run(run_id, "failed")
            assert not await _delivered()
            assert engine.notifier is not None
        assert {d["status"] for d in await list_deliveries()} == {"pending"}
        # Stopped mid-send: its lease is given back, so the next engine may send it at once.
        assert not await _sending()


async def _sending() -> bool:
    return bool(await fetch("SELECT id FROM deliveries WHERE lease_until IS NOT NULL"))
