"""The command line without processes: `-i` assignments, the parser, settings (flags win over
STEPDECK_* variables), the default command, and how progress is printed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import main
from engine.hub import Change, ChangeKind, TokenDelta
from engine.settings import ENV_NAMES, Settings
from ui.cli import ProgressPrinter, parse_assignments

# --- parse_assignments -----------------------------------------------------------------------------------


def test_assignments_become_a_dict_of_strings() -> None:
    assert parse_assignments(["topic=bees", "words=300"]) == {"topic": "bees", "words": "300"}
    assert parse_assignments([]) == {}


def test_only_the_first_equals_sign_splits() -> None:
    assert parse_assignments(["query=a=b", "url=http://x/?q=1"]) == {"query": "a=b", "url": "http://x/?q=1"}


def test_values_are_kept_verbatim_and_keys_trimmed() -> None:
    assert parse_assignments(["empty=", " topic =  two words "]) == {"empty": "", "topic": "  two words "}


def test_a_repeated_key_takes_the_last_value() -> None:
    assert parse_assignments(["n=1", "n=2"]) == {"n": "2"}


@pytest.mark.parametrize("pair", ["topic", "=bees", "  =bees", ""])
def test_a_pair_without_a_key_is_a_usage_error_quoting_it(pair: str) -> None:
    with pytest.raises(ValueError, match="key=value") as err:
        parse_assignments(["ok=1", pair])
    assert repr(pair) in str(err.value)


# --- the parser ----------------------------------------------------------------------------------------------


def test_run_takes_a_workflow_and_repeated_inputs() -> None:
    args = main.build_parser().parse_args(["run", "blog-post", "-i", "topic=bees", "--input", "words=5"])
    assert (args.command, args.workflow, args.inputs) == ("run", "blog-post", ["topic=bees", "words=5"])
    assert (args.db_url, args.workflows_dir) == (None, None)


def test_serve_takes_host_port_db_and_workflows() -> None:
    args = main.build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--port", "9000", "--db", "sqlite://x.db", "--workflows", "defs"]
    )
    assert (args.host, args.port, args.db_url, args.workflows_dir) == ("0.0.0.0", 9000, "sqlite://x.db", Path("defs"))


@pytest.mark.parametrize("command", ["check", "sweep", "migrate"])
def test_maintenance_commands_take_db_and_workflows(command: str) -> None:
    args = main.build_parser().parse_args([command, "--db", "sqlite://y.db"])
    assert (args.command, args.db_url) == (command, "sqlite://y.db")


@pytest.mark.parametrize(
    "argv", [["serve", "--port", "eighty"], ["run"], ["frobnicate"], ["check", "--host", "x"], ["run", "wf", "-i"]]
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main.build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_serve_help_documents_the_loopback_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main.build_parser().parse_args(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "127.0.0.1" in out
    assert "STEPDECK_HOST" in out
    assert "8080" in out


def test_run_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.build_parser().parse_args(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for documented in ("0 completed", "1 failed", "2 bad usage", "3 waiting"):
        assert documented in out, out


# --- settings: flags win over the environment ------------------------------------------------------------


@pytest.fixture
def no_stepdeck_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV_NAMES.values():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def settings_for(argv: list[str]) -> Settings:
    return main.settings_from(main.build_parser().parse_args(argv))


def test_defaults_bind_loopback_on_8080_with_a_local_sqlite_file(no_stepdeck_env: pytest.MonkeyPatch) -> None:
    s = settings_for(["serve"])
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.workflows_dir == Path("workflows")
    assert s.db_url.startswith("sqlite://")
    assert "data/" in s.db_url
    assert Settings().host == "127.0.0.1"


def test_environment_variables_apply(no_stepdeck_env: pytest.MonkeyPatch) -> None:
    no_stepdeck_env.setenv("STEPDECK_HOST", "0.0.0.0")
    no_stepdeck_env.setenv("STEPDECK_PORT", "9001")
    no_stepdeck_env.setenv("STEPDECK_DB", "sqlite:///tmp/env.db")
    no_stepdeck_env.setenv("STEPDECK_WORKFLOWS", "/srv/defs")
    no_stepdeck_env.setenv("STEPDECK_STALE_AFTER_S", "300")
    s = settings_for(["serve"])
    assert (s.host, s.port, s.db_url, s.workflows_dir) == ("0.0.0.0", 9001, "sqlite:///tmp/env.db", Path("/srv/defs"))
    assert s.stale_after_s == 300.0


def test_flags_win_over_environment_variables(no_stepdeck_env: pytest.MonkeyPatch) -> None:
    no_stepdeck_env.setenv("STEPDECK_HOST", "0.0.0.0")
    no_stepdeck_env.setenv("STEPDECK_PORT", "9001")
    no_stepdeck_env.setenv("STEPDECK_DB", "sqlite:///tmp/env.db")
    no_stepdeck_env.setenv("STEPDECK_WORKFLOWS", "/srv/defs")
    s = settings_for(
        ["serve", "--host", "127.0.0.1", "--port", "9100", "--db", "sqlite:///tmp/flag.db", "--workflows", "mine"]
    )
    assert (s.host, s.port, s.db_url, s.workflows_dir) == ("127.0.0.1", 9100, "sqlite:///tmp/flag.db", Path("mine"))


def test_a_flag_wins_only_for_its_own_setting(no_stepdeck_env: pytest.MonkeyPatch) -> None:
    no_stepdeck_env.setenv("STEPDECK_PORT", "9001")
    no_stepdeck_env.setenv("STEPDECK_DB", "sqlite:///tmp/env.db")
    s = settings_for(["run", "wf", "--db", "sqlite:///tmp/flag.db"])
    assert (s.db_url, s.port) == ("sqlite:///tmp/flag.db", 9001)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STEPDECK_PORT", "eighty"),
        ("STEPDECK_PORT", "70000"),
        ("STEPDECK_HEARTBEAT_INTERVAL_S", "0"),
        ("STEPDECK_ON_ORPHAN", "explode"),
    ],
)
def test_a_bad_setting_exits_2_naming_the_variable(
    no_stepdeck_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    no_stepdeck_env.setenv(variable, value)
    no_stepdeck_env.setattr(main, "serve", lambda settings, engine: pytest.fail("served despite a bad setting"))
    assert main.main(["serve"]) == 2
    assert variable in capsys.readouterr().err


def test_a_bad_port_flag_exits_2_naming_the_setting(
    no_stepdeck_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_stepdeck_env.setattr(main, "serve", lambda settings, engine: pytest.fail("served on port 0"))
    assert main.main(["serve", "--port", "0"]) == 2
    assert "PORT" in capsys.readouterr().err


# --- serve is the default command ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "port"), [([], 8080), (["--port", "9200"], 9200), (["serve"], 8080), (["serve", "--port", "9300"], 9300)]
)
def test_serve_is_the_default_command(no_stepdeck_env: pytest.MonkeyPatch, argv: list[str], port: int) -> None:
    served: list[Settings] = []
    no_stepdeck_env.setattr(main, "serve", lambda settings, engine: served.append(settings))
    assert main.main(argv) == 0
    assert [(s.host, s.port) for s in served] == [("127.0.0.1", port)]


# --- progress lines ----------------------------------------------------------------------------------------------


def printed(*changes: Change) -> list[str]:
    out = io.StringIO()
    printer = ProgressPrinter(out)
    for change in changes:
        printer.show(change)
    # drop the elapsed-time prefix "[   0.0s] "
    return [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]


def step(key: str, to: str, attempt: int = 1, message: str | None = None) -> Change:
    return Change(1, ChangeKind.STEP, key, 10, attempt=attempt, to_status=to, message=message)


def test_progress_lines_name_the_step_attempt_and_status() -> None:
    assert printed(
        Change(7, ChangeKind.RUN, None, 1, to_status="running"),
        step("draft", "running"),
        Change(7, ChangeKind.PROGRESS, "draft", None, fraction=0.5, message="half"),
        Change(7, ChangeKind.LOG, "draft", None, line="hello"),
        step("draft", "failed", 2, message="boom"),
        Change(7, ChangeKind.RUN, None, 2, to_status="failed", message="step 'draft' failed: boom"),
    ) == [
        "run 7: running",
        "draft (attempt 1): running",
        "draft: 50% half",
        "draft | hello",
        "draft (attempt 2): failed: boom",
        "run 7: failed: step 'draft' failed: boom",
    ]


def test_progress_lines_leave_out_what_is_not_progress() -> None:
    assert printed(Change(1, ChangeKind.TOKENS, "draft", None, tokens=TokenDelta(0, 0, "text"))) == []
    assert printed(Change(1, ChangeKind.ACTION, None, 3, actor="alice", message="cancelled the run")) == []
