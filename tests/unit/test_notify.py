"""Notification pieces without a database: targets from settings (errors never repeat a URL), what is
shown of a target, scrubbed errors, the body, the signature (checked with the README's own snippet),
and the backoff."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from engine.notify import payload
from engine.notify.notifier import backoff_s
from engine.notify.targets import Target, env_targets, redact, scrub, targets_for, workflow_targets
from engine.settings import Secret, Settings, SettingsError, from_env

ROOT = Path(__file__).resolve().parents[2]


def test_targets_from_the_settings_with_their_events() -> None:
    s = Settings(webhook_urls=Secret("https://a.example/h/t1, https://b.example/h"), notify_urls=Secret("ntfy://topic"))
    hooks = env_targets(s)
    assert [(t.channel, t.label) for t in hooks] == [
        ("webhook", "https://a.example/…"),
        ("webhook", "https://b.example/…"),
        ("apprise", "ntfy://…"),
    ]
    assert all("run.completed" not in t.events for t in hooks)  # opt-in
    opted = env_targets(Settings(webhook_urls=Secret("https://a.example/"), notify_events="run.completed"))
    assert opted[0].events == ("run.completed",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STEPDECK_WEBHOOK_URL": "ftp://secret-token@x"}, "STEPDECK_WEBHOOK_URL: entry 1 is not an http"),
        ({"STEPDECK_NOTIFY": "not-a-url-tok123"}, "STEPDECK_NOTIFY: entry 1 is not an Apprise URL"),
        ({"STEPDECK_NOTIFY_EVENTS": "run.exploded"}, "unknown event 'run.exploded'"),
        ({"STEPDECK_PUBLIC_URL": "dashboard"}, "STEPDECK_PUBLIC_URL must start with http"),
    ],
)
def test_bad_settings_are_named_without_the_url(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as err:
        from_env(env)
    assert "secret-token" not in str(err.value) and "tok123" not in str(err.value)


def test_what_is_shown_of_a_target() -> None:
    assert redact("https://user:pw@hooks.example.com:8443/services/T0/B0/XYZ?token=abc") == (
        "https://hooks.example.com:8443/…"
    )
    assert redact("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert redact("slack://T000/B000/XXXX") == "slack://…"
    target = Target("https://hooks.example.com/services/T0/B0/XYZ", "webhook", ("run.failed",))
    assert "XYZ" not in repr(target)
    assert "XYZ" not in str(Settings(webhook_urls=Secret(target.url)))
    error = "ConnectError: cannot reach https://hooks.example.com/services/T0/B0/XYZ"
    assert scrub(error, [target]) == "ConnectError: cannot reach https://hooks.example.com/…"


def test_targets_for_an_event_are_each_named_once() -> None:
    env = Target("https://a.example/h", "webhook", ("run.failed",))
    wf = workflow_targets([{"url": "https://a.example/h", "events": ["run.failed"]}, {"url": "ntfy://x", "events": []}])
    assert targets_for("run.failed", [env, *wf]) == [env]
    assert targets_for("run.waiting", [env, *wf]) == []


def _row(**over: Any) -> dict[str, Any]:
    row = {
        "event": "step.truncated",
        "created_at": "2026-01-01T00:00:00+00:00",
        "run_id": 7,
        "workflow": "w",
        "run_status": "running",
        "error": None,
        "step_key": "draft",
        "step_label": "Draft",
        "step_status": "completed",
        "detail": None,
    }
    return {**row, **over}


def test_the_body_has_the_documented_shape() -> None:
    body = payload.body(_row(), "https://deck.example/")
    assert body == {
        "event": "step.truncated",
        "at": "2026-01-01T00:00:00+00:00",
        "run": {"id": 7, "workflow": "w", "status": "running", "error": None},
        "step": {"key": "draft", "label": "Draft", "status": "completed"},
        "url": "https://deck.example/runs/7?step=draft",
    }
    budget = payload.body(_row(event="budget.reached", step_key=None, detail="$5 of $5 spent"), "http://h")
    assert budget["step"] is None and budget["detail"] == "$5 of $5 spent"
    title, text = payload.text(budget)
    assert title == "Stepdeck: run 7 of w reached its budget" and text.endswith("http://h/runs/7")


def test_the_readme_snippet_verifies_our_signature() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(import hashlib.*?)```", readme, re.S)
    assert block is not None
    namespace: dict[str, Any] = {}
    exec(block[1], namespace)
    raw = payload.encode(payload.body(_row(), "http://h"))
    timestamp = str(int(time.time()))
    headers = {"X-Stepdeck-Timestamp": timestamp, "X-Stepdeck-Signature": payload.signature("k", timestamp, raw)}
    assert namespace["verify"]("k", headers, raw) is True
    assert namespace["verify"]("other", headers, raw) is False
    assert namespace["verify"]("k", headers, raw + b" ") is False
    assert payload.verify("k", timestamp, raw, headers["X-Stepdeck-Signature"])


def test_backoff_doubles_up_to_an_hour() -> None:
    assert [backoff_s(10, n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff_s(10, 40) == 3600


def test_a_workflow_target_can_name_an_environment_variable() -> None:
    notify = [{"url": "${TEAM_HOOK}", "events": ["run.failed"]}, {"url": "${UNSET_HOOK}", "events": ["run.failed"]}]
    (target,) = workflow_targets(notify, {"TEAM_HOOK": "https://hooks.example.com/T/B/secret"})
    assert (target.url, target.label, target.channel) == (
        "https://hooks.example.com/T/B/secret",
        "https://hooks.example.com/…",
        "webhook",
    )
    assert workflow_targets(notify, {}) == []  # not set in this process: nothing to send to
