"""Retry fields and notification targets in workflow YAML: defaults, inheritance, and errors located by
file, line, step and field like every other field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.definitions import DefinitionError, WorkflowDef, load_file
from tests.bad_values import bad_values

MODULE = "def ok(ctx):\n    return 'ok'\n"


def _load(tmp_path: Path, text: str) -> WorkflowDef:
    (tmp_path / "mod_retry.py").write_text(MODULE)
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(text))
    return load_file(path, tmp_path)


def test_steps_inherit_the_workflow_defaults_and_override_them(tmp_path: Path) -> None:
    defn = _load(
        tmp_path,
        """
        retries: 2
        retry_delay_s: 5
        retry_on: [error, truncated]
        steps:
          - key: a
            call: mod_retry:ok
          - key: b
            call: mod_retry:ok
            retries: 0
            retry_backoff: 3
        """,
    )
    a, b = defn.steps
    assert (a.retries, a.retry_delay_s, a.retry_backoff, a.retry_on) == (2, 5.0, 2.0, ("error", "truncated"))
    assert (b.retries, b.retry_delay_s, b.retry_backoff, b.retry_max_delay_s) == (0, 5.0, 3.0, 600.0)
    assert WorkflowDef.from_snapshot(defn.to_snapshot()) == defn


def test_no_retry_policy_by_default(tmp_path: Path) -> None:
    step = _load(tmp_path, "steps:\n  - key: a\n    call: mod_retry:ok\n").steps[0]
    assert (step.retries, step.retry_delay_s, step.retry_backoff, step.retry_max_delay_s) == (0, 10.0, 2.0, 600.0)
    assert step.retry_on == ("error", "timeout")


@bad_values(
    "field, value, message",
    {
        "retries": {
            "-1": "expected an integer from 0 to 100, got -1",
            "yes": "expected an integer from 0 to 100, got True",
        },
        "retry_delay_s": {"soon": "expected a number of seconds"},
        "retry_backoff": {"0.5": "expected a multiplier from 1 to 100"},
        "retry_max_delay_s": {"-3": "expected a number of seconds"},
        "retry_on": {"[error, crash]": "expected a list of error, timeout, truncated"},
        "retry_max_tokens_factor": {"0": "expected a number from 1 to 16"},
    },
)
def test_a_bad_step_field_is_located(tmp_path: Path, field: str, value: str, message: str) -> None:
    with pytest.raises(DefinitionError) as err:
        _load(tmp_path, f"steps:\n  - key: a\n    call: mod_retry:ok\n    {field}: {value}\n")
    assert (err.value.step, err.value.field, err.value.line) == ("a", field, 4)
    assert message in str(err.value) and str(err.value).startswith(f"{tmp_path / 'wf.yaml'}:4: step 'a': {field}")


def test_a_bad_workflow_default_is_located(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as err:
        _load(tmp_path, "description: x\nretries: many\nsteps:\n  - key: a\n    call: mod_retry:ok\n")
    assert (err.value.field, err.value.line, err.value.step) == ("retries", 2, None)


def test_notify_targets_with_their_events(tmp_path: Path) -> None:
    defn = _load(
        tmp_path,
        """
        notify:
          - https://hooks.example.com/stepdeck
          - url: ntfy://ops-alerts
            events: [run.completed, run.failed]
          - url: ${TEAM_SLACK_URL}
        steps:
          - key: a
            call: mod_retry:ok
        """,
    )
    hook, chat, from_env = defn.notify
    assert from_env.url == "${TEAM_SLACK_URL}"  # the URL itself never enters the definition
    assert hook.url == "https://hooks.example.com/stepdeck" and "run.completed" not in hook.events  # opt-in
    assert chat.events == ("run.completed", "run.failed")
    assert WorkflowDef.from_snapshot(defn.to_snapshot()) == defn


@pytest.mark.parametrize(
    ("entry", "field", "line"),
    [
        ("  - url: not a url\n", "notify[0].url", 2),
        ("  - url: https://x.example/h\n    events: [run.exploded]\n", "notify[0].events", 3),
        ("  - url: https://x.example/h\n    secret: x\n", "notify[0].secret", 3),
    ],
)
def test_a_bad_notify_entry_is_located(tmp_path: Path, entry: str, field: str, line: int) -> None:
    with pytest.raises(DefinitionError) as err:
        _load(tmp_path, f"notify:\n{entry}steps:\n  - key: a\n    call: mod_retry:ok\n")
    assert (err.value.field, err.value.line) == (field, line)
    assert "not a url" not in str(err.value)  # a URL may carry a token: never repeated
