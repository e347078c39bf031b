"""The `schedules:` list of a workflow definition (engine/definitions.py `_parse_schedules`): what loads, and
every mistake reported with its file, line and field."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.definitions import DefinitionError, ScheduleDef, WorkflowDef, load_file

HEAD = """\
name: nightly-report
inputs:
  topic:
    type: string
  count:
    type: integer
    default: 3
steps:
  - key: only
    call: tests.stepfns:noop
schedules:
"""


def write(tmp_path: Path, schedules: str) -> Path:
    path = tmp_path / "nightly-report.yaml"
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(schedules).strip("\n"), "  ") + "\n", encoding="utf-8")
    return path


def load(tmp_path: Path, schedules: str) -> WorkflowDef:
    return load_file(write(tmp_path, schedules), tmp_path)


def error(tmp_path: Path, schedules: str, needle: str) -> DefinitionError:
    """The DefinitionError of the file; checks it names the file and the line holding `needle`."""
    path = write(tmp_path, schedules)
    with pytest.raises(DefinitionError) as info:
        load_file(path, tmp_path)
    exc = info.value
    lines = path.read_text(encoding="utf-8").splitlines()
    assert exc.source == str(path)
    assert exc.line == next(n for n, text in enumerate(lines, start=1) if needle in text), str(exc)
    assert str(exc).startswith(f"{path}:{exc.line}: ")
    return exc


def test_a_schedule_with_every_field(tmp_path: Path) -> None:
    defn = load(
        tmp_path,
        """
        - name: weekday-mornings
          cron: "0 9 * * 1-5"
          timezone: Europe/Berlin
          inputs: {topic: markets}
          enabled: false
          catch_up: once
          description: Before the stand-up.
        """,
    )
    assert defn.schedules == (
        ScheduleDef(
            "weekday-mornings",
            "0 9 * * 1-5",
            "Europe/Berlin",
            {"topic": "markets"},
            False,
            "once",
            "Before the stand-up.",
        ),
    )
    assert WorkflowDef.from_snapshot(defn.to_snapshot()).schedules == defn.schedules


def test_defaults_skip_enabled_and_the_servers_time_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.cron.local_timezone", lambda: "Asia/Tokyo")
    (sched,) = load(tmp_path, '- {name: hourly, cron: "0 * * * *", inputs: {topic: x}}').schedules
    assert (sched.timezone, sched.enabled, sched.catch_up, sched.inputs) == ("Asia/Tokyo", True, "skip", {"topic": "x"})


# How an error's detail reads: it holds the text, starts with it, or is it.
READS: dict[str, Callable[[str, str], bool]] = {"holds": str.__contains__, "starts": str.startswith, "is": str.__eq__}


@pytest.mark.parametrize(
    ("entry", "needle", "field", "reads", "says"),
    [
        pytest.param(
            '- name: broken\n  cron: "61 * * * *"\n  inputs: {topic: x}',
            "cron:",
            "schedules.broken.cron",
            "holds",
            "invalid cron expression '61 * * * *'",
            id="invalid_cron_expression",
        ),
        pytest.param(
            '- name: six\n  cron: "0 0 9 * * 1"\n  inputs: {topic: x}',
            "cron:",
            "schedules.six.cron",
            "holds",
            "expected 5 fields",
            id="cron_with_the_wrong_number_of_fields",
        ),
        pytest.param(
            "- name: nothing\n  inputs: {topic: x}",
            "- name: nothing",
            "schedules.nothing.cron",
            "starts",
            "required",
            id="missing_cron",
        ),
        pytest.param(
            '- name: far\n  cron: "0 9 * * *"\n  timezone: Mars/Olympus\n  inputs: {topic: x}',
            "timezone:",
            "schedules.far.timezone",
            "holds",
            "unknown time zone 'Mars/Olympus'",
            id="unknown_time_zone",
        ),
        pytest.param(
            '- name: typed\n  cron: "0 9 * * *"\n  inputs: {topic: x, count: many}',
            "inputs: {",
            "schedules.typed.inputs",
            "starts",
            "count: ",
            id="inputs_that_fail_the_workflows_validation",
        ),
        pytest.param(
            '- name: bare\n  cron: "0 9 * * *"',
            "- name: bare",
            "schedules.bare.inputs",
            "is",
            "topic: required input missing",
            id="inputs_missing_a_required_one",
        ),
        pytest.param(
            '- name: extra\n  cron: "0 9 * * *"\n  inputs: {topic: x, colour: red}',
            "inputs: {",
            "schedules.extra.inputs",
            "holds",
            "colour: unknown input",
            id="unknown_input",
        ),
        pytest.param(
            '- name: typo\n  cron: "0 9 * * *"\n  inputs: {topic: x}\n  timzone: UTC',
            "timzone:",
            "schedules.typo.timzone",
            "holds",
            "unknown field 'timzone'",
            id="unknown_field",
        ),
    ],
)
def test_a_mistake_names_its_line_and_field(
    tmp_path: Path, entry: str, needle: str, field: str, reads: str, says: str
) -> None:
    exc = error(tmp_path, entry, needle)
    assert exc.field == field
    assert READS[reads](exc.detail, says), f"the detail {exc.detail!r} should {reads} {says!r}"


def test_duplicate_name_points_at_the_second(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        - name: twice
          cron: "0 9 * * *"
          inputs: {topic: x}
        - name: twice
          cron: "0 10 * * *"
          inputs: {topic: y}
        """,
    )
    with pytest.raises(DefinitionError) as info:
        load_file(path, tmp_path)
    exc = info.value
    second = [n for n, text in enumerate(path.read_text().splitlines(), start=1) if "name: twice" in text][1]
    assert (exc.source, exc.line, exc.field) == (str(path), second, "schedules.twice.name")
    assert "duplicate schedule name 'twice'" in exc.detail


@pytest.mark.parametrize(
    ("entry", "field", "says"),
    [
        ('- name: Bad Name\n  cron: "0 9 * * *"', "schedules.Bad Name.name", "every schedule needs a name"),
        (
            '- name: sloppy\n  cron: "0 9 * * *"\n  inputs: {topic: x}\n  catch_up: all',
            "schedules.sloppy.catch_up",
            "expected one of skip, once",
        ),
        (
            '- name: flag\n  cron: "0 9 * * *"\n  inputs: {topic: x}\n  enabled: "yes"',
            "schedules.flag.enabled",
            "expected true or false",
        ),
        ('- name: listy\n  cron: "0 9 * * *"\n  inputs: [topic]', "schedules.listy.inputs", "expected a mapping"),
    ],
)
def test_other_mistakes_name_their_field(tmp_path: Path, entry: str, field: str, says: str) -> None:
    path = write(tmp_path, entry)
    with pytest.raises(DefinitionError) as info:
        load_file(path, tmp_path)
    assert info.value.field == field
    assert says in info.value.detail
    assert info.value.line is not None


def test_schedules_must_be_a_list(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(HEAD + '  name: hourly\n  cron: "0 * * * *"\n', encoding="utf-8")
    with pytest.raises(DefinitionError) as info:
        load_file(path, tmp_path)
    assert (info.value.field, info.value.line) == ("schedules", HEAD.count("\n"))
    assert "expected a list of schedules" in info.value.detail
