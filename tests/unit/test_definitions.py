"""Loading and validating workflow definitions (engine/definitions.py, engine/calls.py)."""

import json
import pickle
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.calls import CallError, resolve_call
from engine.definitions import (
    DefinitionError,
    StepDef,
    WorkflowDef,
    load_directory,
    load_file,
    parse_definition,
)
from engine.registry import Registry
from tests.bad_values import bad_values

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"

STEP_FUNCTIONS = """
def ok(ctx):
    return "ok"

async def ok_async(ctx):
    return "ok"

NOT_CALLABLE = 3
"""


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # resolve_call puts each tmp_path on sys.path; restore it so tests cannot find each other's modules.
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("steps_"):
            del sys.modules[name]


@pytest.fixture
def mod(tmp_path: Path) -> str:
    """Name of a fresh module in tmp_path holding step functions; unique so no test sees a cached import."""
    name = f"steps_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(STEP_FUNCTIONS)
    return name


def write(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of the file containing `needle`."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def load(tmp_path: Path, text: str, name: str = "wf.yaml") -> WorkflowDef:
    return load_file(write(tmp_path, text, name), tmp_path)


def load_error(tmp_path: Path, text: str, name: str = "wf.yaml") -> tuple[DefinitionError, Path]:
    path = write(tmp_path, text, name)
    with pytest.raises(DefinitionError) as info:
        load_file(path, tmp_path)
    assert str(info.value).startswith(str(path)), "every error names the file"
    return info.value, path


def steps_yaml(mod: str, *extra_steps: str) -> str:
    """Three steps a, b, c; `extra_steps` are appended verbatim."""
    lines = ["steps:"]
    for key in ("a", "b", "c"):
        lines += [f"  - key: {key}", f"    call: {mod}:ok"]
    return "\n".join([*lines, *extra_steps]) + "\n"


# --- defaults -------------------------------------------------------------------------------------


def test_defaults_make_a_plain_list_a_sequence(tmp_path: Path, mod: str) -> None:
    defn = load(tmp_path, steps_yaml(mod), name="my-flow.yaml")

    assert defn.name == "my-flow"
    assert defn.description == ""
    assert defn.inputs == ()
    assert defn.keys() == ["a", "b", "c"]
    a, b, c = defn.steps
    assert a == StepDef("a", "a", "python", (), 1, "auto", 900.0, f"{mod}:ok", "", {})
    assert b.needs == ("a",)
    assert c.needs == ("b",)
    assert defn.source == str(tmp_path / "my-flow.yaml")


def test_explicit_fields_override_defaults(tmp_path: Path, mod: str) -> None:
    defn = load(
        tmp_path,
        f"""
        name: Custom.Name_1
        description: Does things.
        schedules: [{{cron: "0 * * * *"}}]
        steps:
          - key: a
            label: First step
            description: The first one.
            call: {mod}:ok_async
            timeout_s: 2.5
          - key: b
            call: {mod}:ok
            needs: []
            alternatives: 3
          - key: c
            call: {mod}:ok
            needs: a
            alternatives: 2
            select: auto
          - key: d
            call: {mod}:ok
            needs: [b, c]
            select: human
        """,
    )

    assert defn.name == "Custom.Name_1"
    assert defn.description == "Does things."
    a, b, c, d = defn.steps
    assert (a.label, a.description, a.timeout_s) == ("First step", "The first one.", 2.5)
    assert (b.needs, b.alternatives, b.select) == ((), 3, "human")
    assert (c.needs, c.alternatives, c.select) == (("a",), 2, "auto")
    assert (d.needs, d.alternatives, d.select) == (("b", "c"), 1, "human")


def test_inputs_long_and_short_form(tmp_path: Path, mod: str) -> None:
    inputs = """
        inputs:
          topic: string
          notes: text
          tone: {type: choice, options: [friendly, formal], default: formal, description: Voice.}
          words: {type: integer, default: 300}
          ratio: {type: number, default: 1}
          extra: {type: json, required: false}
          draft_date: {type: string, default: 2024-01-01}
        """
    defn = load(tmp_path, textwrap.dedent(inputs) + steps_yaml(mod))

    by_name = {i.name: i for i in defn.inputs}
    assert list(by_name) == ["topic", "notes", "tone", "words", "ratio", "extra", "draft_date"]
    assert (by_name["topic"].type, by_name["topic"].required, by_name["topic"].default) == ("string", True, None)
    assert by_name["notes"].type == "text"
    tone = by_name["tone"]
    assert (tone.required, tone.default, tone.options, tone.description) == (
        False,
        "formal",
        ("friendly", "formal"),
        "Voice.",
    )
    assert (by_name["words"].required, by_name["words"].default) == (False, 300)
    assert by_name["ratio"].default == 1
    assert (by_name["extra"].required, by_name["extra"].default) == (False, None)
    # An unquoted date stays the text the author wrote.
    assert by_name["draft_date"].default == "2024-01-01"


def test_a_runs_inputs_are_shown_in_declared_order_whatever_order_they_were_stored_in(tmp_path: Path, mod: str) -> None:
    inputs = "inputs:\n  topic: string\n  count: {type: integer, default: 3}\n  tone: {type: string, default: x}\n"
    registry = Registry()
    registry.add(load(tmp_path, inputs + steps_yaml(mod)))
    name = next(iter(registry.definitions))
    stored = {"tone": "x", "count": 3, "extra": True, "topic": "bees"}  # as PostgreSQL's jsonb gives them back
    assert list(registry.in_declared_order(name, stored).items()) == [
        ("topic", "bees"),
        ("count", 3),
        ("tone", "x"),
        ("extra", True),
    ]
    assert list(registry.in_declared_order("removed-since", stored)) == list(stored)


# --- graph helpers and snapshots ------------------------------------------------------------------


def test_step_keys_and_dependents(tmp_path: Path, mod: str) -> None:
    defn = load(
        tmp_path,
        f"""
        steps:
          - {{key: a, call: "{mod}:ok"}}
          - {{key: b, call: "{mod}:ok", needs: []}}
          - {{key: c, call: "{mod}:ok", needs: [e]}}
          - {{key: d, call: "{mod}:ok", needs: [a, b]}}
          - {{key: e, call: "{mod}:ok", needs: [d]}}
          - {{key: f, call: "{mod}:ok", needs: [b]}}
        """,
    )

    assert defn.keys() == ["a", "b", "c", "d", "e", "f"]
    assert defn.step("d").needs == ("a", "b")
    # c needs e, which is declared after it: dependents still come out in declared order.
    assert defn.dependents("a") == ["c", "d", "e"]
    assert defn.dependents("b") == ["c", "d", "e", "f"]
    assert defn.dependents("e") == ["c"]
    assert defn.dependents("c") == []
    with pytest.raises(KeyError):
        defn.step("zzz")
    with pytest.raises(KeyError):
        defn.dependents("zzz")


def test_snapshot_round_trip_through_json(tmp_path: Path, mod: str) -> None:
    defn = load(
        tmp_path,
        f"""
        description: Snap.
        inputs:
          topic: string
          tone: {{type: choice, options: [x, y], default: y}}
          data: {{type: json, default: {{a: [1, 2.5, null]}}}}
        steps:
          - {{key: a, call: "{mod}:ok", timeout_s: 3}}
          - {{key: b, call: "{mod}:ok", alternatives: 3, label: B}}
        """,
    )

    snapshot = defn.to_snapshot()
    text = json.dumps(snapshot)

    assert json.dumps(defn.to_snapshot()) == text, "the snapshot is stable"
    assert WorkflowDef.from_snapshot(json.loads(text)) == defn
    # Runs share the snapshot the definition keeps; an equal definition rebuilt from it keeps its own.
    assert defn.snapshot_json() is defn.snapshot_json()
    assert json.loads(defn.snapshot_json()) == snapshot
    rebuilt = WorkflowDef.from_snapshot(json.loads(text))
    assert rebuilt == defn and rebuilt.snapshot_json() is not defn.snapshot_json()
    assert snapshot["steps"][1]["alternatives"] == 3


def test_from_snapshot_does_not_resolve_calls() -> None:
    snapshot = {
        "version": 1,
        "name": "gone",
        "description": "",
        "source": "old.yaml",
        "inputs": [],
        "steps": [
            {
                "key": "a",
                "label": "a",
                "kind": "python",
                "needs": [],
                "alternatives": 1,
                "select": "auto",
                "timeout_s": 1.0,
                "call": "module_that_was_deleted:fn",
                "description": "",
                "config": {},
            }
        ],
    }

    defn = WorkflowDef.from_snapshot(snapshot)

    assert defn.step("a").call == "module_that_was_deleted:fn"
    # Snapshots from before schedules, retry policies and notifications still load, with the defaults.
    no_retry = {
        "retries": 0,
        "retry_delay_s": 10.0,
        "retry_backoff": 2.0,
        "retry_max_delay_s": 600.0,
        "retry_on": ["error", "timeout"],
        "retry_max_tokens_factor": 1.0,
    }
    steps = [{**s, **no_retry} for s in snapshot["steps"]]  # type: ignore[attr-defined]
    assert defn.to_snapshot() == {**snapshot, "steps": steps, "schedules": [], "notify": []}
    with pytest.raises(ValueError, match="version"):
        WorkflowDef.from_snapshot({**snapshot, "version": 99})


# --- structural errors ------------------------------------------------------------------------------


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    err, path = load_error(tmp_path, "name: x\nsteps:\n  - key: a\n    call: [unclosed\n  - key: b\n")

    assert err.line is not None
    assert err.line >= 4
    assert err.detail.startswith("invalid YAML")
    assert str(err).startswith(f"{path}:{err.line}: invalid YAML")


@pytest.mark.parametrize(
    ("text", "dup"),
    [
        ("name: x\nsteps: []\nname: y\n", "name"),
        ("steps:\n  - key: a\n    call: m:f\n    label: A\n    label: B\n", "label"),
        ("inputs:\n  topic:\n    type: string\n    type: text\nsteps: []\n", "type"),
    ],
)
def test_duplicate_mapping_keys_are_rejected_anywhere(tmp_path: Path, text: str, dup: str) -> None:
    err, _path = load_error(tmp_path, text)

    assert f"duplicate key '{dup}'" in err.detail
    assert err.line == [n for n, line in enumerate(text.splitlines(), 1) if line.strip().startswith(f"{dup}:")][1]


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path, mod: str) -> None:
    defn = load(
        tmp_path,
        f"""
        steps:
          - &base {{key: a, call: "{mod}:ok", timeout_s: 5}}
          - {{<<: *base, key: b}}
        """,
    )

    assert defn.step("b").timeout_s == 5.0


@pytest.mark.parametrize(("text", "got"), [("", "null"), ("- a\n- b\n", "list"), ("just text\n", "string")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    err, _ = load_error(tmp_path, text)

    assert "top level must be a mapping" in err.detail
    assert got in err.detail


@pytest.mark.parametrize(
    ("steps", "detail"),
    [("", "missing or empty"), ("steps: []", "missing or empty"), ("steps: {a: 1}", "expected a list")],
)
def test_steps_missing_empty_or_not_a_list(tmp_path: Path, steps: str, detail: str) -> None:
    err, _ = load_error(tmp_path, f"description: nothing to do\n{steps}\n")

    assert err.field == "steps"
    assert detail in err.detail


def test_unknown_top_level_field(tmp_path: Path, mod: str) -> None:
    err, _path = load_error(tmp_path, "stepz: 1\n" + steps_yaml(mod))

    assert "unknown field 'stepz'" in str(err)
    assert err.line == 1


@pytest.mark.parametrize("name", ["-dash-first", "has space", "", "ü"])
def test_bad_workflow_name(tmp_path: Path, mod: str, name: str) -> None:
    err, path = load_error(tmp_path, f"name: {json.dumps(name)}\n" + steps_yaml(mod))

    assert err.field == "name"
    assert err.line == 1
    assert f"{path}:1: name: invalid workflow name" in str(err)


def test_bad_file_stem_without_name_field(tmp_path: Path, mod: str) -> None:
    err, _ = load_error(tmp_path, steps_yaml(mod), name="my flow.yaml")

    assert err.field == "name"
    assert "'my flow'" in err.detail


# --- step errors ------------------------------------------------------------------------------------


def test_step_not_a_mapping_is_named_by_position(tmp_path: Path, mod: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - just-a-string"))

    assert err.step == "#4"
    assert str(err) == f"{path}: step #4: expected a mapping, got string"


def test_missing_step_key(tmp_path: Path, mod: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - label: Nameless", f"    call: {mod}:ok"))

    assert (err.step, err.field, err.line) == ("#4", "key", line_of(path, "Nameless"))
    assert f"{path}:{err.line}: step #4: key: missing" in str(err)


@pytest.mark.parametrize("key", ["Draft", "-x", "_x", "a b", "a.b", "x" * 101, "5", "true"])
def test_bad_step_key(tmp_path: Path, mod: str, key: str) -> None:
    yaml_key = key if key in ("5", "true") else json.dumps(key)  # 5 and true load as int and bool
    err, path = load_error(tmp_path, steps_yaml(mod, f"  - key: {yaml_key}", f"    call: {mod}:ok"))

    assert (err.step, err.field, err.line) == ("#4", "key", line_of(path, f"key: {yaml_key}"))
    assert "invalid key" in err.detail


def test_longest_valid_step_key(tmp_path: Path, mod: str) -> None:
    key = "0" + "a-_" * 33  # 100 characters
    defn = load(tmp_path, steps_yaml(mod, f"  - key: {json.dumps(key)}", f"    call: {mod}:ok"))

    assert defn.keys()[-1] == key


def test_duplicate_step_keys(tmp_path: Path, mod: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: b   # again", f"    call: {mod}:ok"))

    assert (err.step, err.field, err.line) == ("b", "key", line_of(path, "# again"))
    assert "duplicate step key 'b' (also step #2)" in str(err)


def test_unknown_needs_names_file_line_step_and_known_steps(tmp_path: Path, mod: str) -> None:
    path = write(
        tmp_path,
        f"""
        name: blog
        steps:
          - key: outline
            call: {mod}:ok
          - key: draft
            call: {mod}:ok
            needs: [outlin]
          - key: polish
            call: {mod}:ok
        """,
    )
    with pytest.raises(DefinitionError) as info:
        load_file(path, tmp_path)

    line = line_of(path, "needs: [outlin]")
    assert str(info.value) == f"{path}:{line}: step 'draft': needs: unknown step 'outlin' (known: outline, polish)"
    assert (info.value.source, info.value.step, info.value.field, info.value.line) == (
        str(path),
        "draft",
        "needs",
        line,
    )


@pytest.mark.parametrize(
    ("needs", "detail"),
    [("[a, a]", "more than once"), ("[1]", "expected a step key"), ("{a: 1}", "expected a step key")],
)
def test_malformed_needs(tmp_path: Path, mod: str, needs: str, detail: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: d", f"    call: {mod}:ok", f"    needs: {needs}"))

    assert (err.step, err.field, err.line) == ("d", "needs", line_of(path, f"needs: {needs}"))
    assert detail in err.detail


def test_step_needing_itself(tmp_path: Path, mod: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: d", f"    call: {mod}:ok", "    needs: [a, d]"))

    assert (err.step, err.field, err.line) == ("d", "needs", line_of(path, "needs: [a, d]"))
    assert "cannot need itself" in str(err)


def test_two_step_cycle_names_the_path(tmp_path: Path, mod: str) -> None:
    err, path = load_error(
        tmp_path,
        f"""
        steps:
          - key: a
            call: {mod}:ok
            needs: [b]
          - key: b
            call: {mod}:ok
        """,
    )

    assert (err.step, err.field, err.line) == ("a", "needs", line_of(path, "needs: [b]"))
    assert str(err) == f"{path}:{err.line}: step 'a': needs: cycle: a -> b -> a"


def test_longer_cycle_behind_an_acyclic_prefix(tmp_path: Path, mod: str) -> None:
    err, _ = load_error(
        tmp_path,
        f"""
        steps:
          - {{key: start, call: "{mod}:ok"}}
          - {{key: x, call: "{mod}:ok", needs: [start, z]}}
          - {{key: y, call: "{mod}:ok"}}
          - {{key: z, call: "{mod}:ok"}}
        """,
    )

    assert err.detail == "cycle: x -> z -> y -> x"


def test_unknown_kind_names_the_known_ones(tmp_path: Path, mod: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: d", "    kind: shell", "    command: ls"))

    assert (err.step, err.field, err.line) == ("d", "kind", line_of(path, "kind: shell"))
    assert "unknown kind 'shell' (known: python, llm)" in str(err)


def test_unknown_step_field(tmp_path: Path, mod: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: d", f"    call: {mod}:ok", "    foo: 1"))

    assert (err.step, err.line) == ("d", line_of(path, "foo: 1"))
    assert f"{path}:{err.line}: step 'd': unknown field 'foo'" in str(err)


@pytest.mark.parametrize("value", ["0", "21", "-1", "'3'", "true", "2.5", "null"])
def test_bad_alternatives(tmp_path: Path, mod: str, value: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: d", f"    call: {mod}:ok", f"    alternatives: {value}"))

    assert (err.step, err.field, err.line) == ("d", "alternatives", line_of(path, "alternatives:"))
    assert "expected an integer from 1 to 20" in str(err)


@pytest.mark.parametrize("value", ["maybe", "Human", "1", "[auto]"])
def test_bad_select(tmp_path: Path, mod: str, value: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: d", f"    call: {mod}:ok", f"    select: {value}"))

    assert (err.step, err.field, err.line) == ("d", "select", line_of(path, "select:"))
    assert "expected one of auto, human" in str(err)


@pytest.mark.parametrize("value", ["0", "-5", "'10'", "true", ".inf", ".nan", "null"])
def test_bad_timeout(tmp_path: Path, mod: str, value: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: d", f"    call: {mod}:ok", f"    timeout_s: {value}"))

    assert (err.step, err.field, err.line) == ("d", "timeout_s", line_of(path, "timeout_s:"))
    assert "expected a positive number of seconds" in str(err)


@pytest.mark.parametrize(("field", "value"), [("label", "''"), ("label", "[x]"), ("description", "[x]")])
def test_bad_label_or_description(tmp_path: Path, mod: str, field: str, value: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: d", f"    call: {mod}:ok", f"    {field}: {value}"))

    assert (err.step, err.field, err.line) == ("d", field, line_of(path, f"{field}:"))


def test_python_step_without_call(tmp_path: Path, mod: str) -> None:
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: d", "    label: No call"))

    assert (err.step, err.field) == ("d", "call")
    assert err.line == line_of(path, "- key: d")
    assert "required for kind python" in str(err)


@pytest.mark.parametrize(
    ("call", "detail"),
    [
        ("nocolon", "expected 'module:function', got 'nocolon'"),
        ("a:b:c", "expected 'module:function'"),
        ("mod:", "expected 'module:function'"),
        ("bad-module:fn", "expected 'module:function'"),
        ("{mod}:missing_fn", "module '{mod}' has no attribute 'missing_fn'"),
        ("{mod}:NOT_CALLABLE", "is not callable"),
        ("no_such_module_{uid}:fn", "module 'no_such_module_{uid}' not found"),
    ],
)
def test_bad_call_is_a_definition_error(tmp_path: Path, mod: str, call: str, detail: str) -> None:
    uid = uuid.uuid4().hex
    call, detail = call.format(mod=mod, uid=uid), detail.format(mod=mod, uid=uid)
    err, path = load_error(tmp_path, steps_yaml(mod, "  - key: d", f"    call: {json.dumps(call)}"))

    assert (err.step, err.field, err.line) == ("d", "call", line_of(path, "call: " + json.dumps(call)))
    assert f"{path}:{err.line}: step 'd': call: " in str(err)
    assert detail in err.detail


def test_call_to_a_module_that_raises_on_import(tmp_path: Path, mod: str) -> None:
    broken = f"steps_broken_{uuid.uuid4().hex}"
    (tmp_path / f"{broken}.py").write_text("raise RuntimeError('no API key configured')\n")
    err, _ = load_error(tmp_path, steps_yaml(mod, "  - key: d", f"    call: {broken}:fn"))

    assert err.field == "call"
    assert f"importing module '{broken}' failed: RuntimeError: no API key configured" in err.detail


def test_definition_error_survives_pickling() -> None:
    err = DefinitionError("a.yaml", "boom", step="s", field="f", line=3)

    copy = pickle.loads(pickle.dumps(err))

    assert str(copy) == str(err) == "a.yaml:3: step 's': f: boom"


# --- input declaration errors -----------------------------------------------------------------------


@bad_values(
    "field, decl, detail",
    {
        "inputs.topic.type": {"topic: strng": "unknown type 'strng' (known: string, text, integer"},
        "inputs.topic.options": {
            "topic: {type: choice}": "non-empty list",
            "topic: {type: choice, options: []}": "non-empty list",
            "topic: {type: choice, options: [a, a]}": "unique",
            "topic: {type: string, options: [a]}": "only allowed for type choice",
        },
        "inputs.topic.default": {
            "topic: {type: integer, default: abc}": "expected an integer, got string",
            "topic: {type: integer, default: true}": "expected an integer, got boolean",
            "topic: {type: choice, options: [a, b], default: c}": "'c' is not one of: a, b",
            "topic: {type: boolean, default: 'yes'}": "expected true or false",
        },
        "inputs.topic.required": {"topic: {type: string, required: maybe}": "expected true or false"},
        "inputs.topic": {
            "topic: {type: string, colour: red}": "unknown field 'colour'",
            "topic: [string]": "expected a type name or a mapping",
        },
        "inputs.2fast": {"2fast: string": "invalid input name '2fast'"},
        "inputs.my-topic": {"my-topic: string": "invalid input name 'my-topic'"},
    },
)
def test_bad_input_declarations(tmp_path: Path, mod: str, field: str, decl: str, detail: str) -> None:
    err, path = load_error(tmp_path, f"inputs:\n  {decl}\n" + steps_yaml(mod))

    assert err.step is None
    assert err.field == field
    assert err.line == 2
    assert f"{path}:2: {field}: " in str(err)
    assert detail in err.detail


def test_inputs_must_be_a_mapping(tmp_path: Path, mod: str) -> None:
    err, _ = load_error(tmp_path, "inputs: [topic]\n" + steps_yaml(mod))

    assert (err.field, err.line) == ("inputs", 1)


# --- directories ------------------------------------------------------------------------------------


def test_directory_keeps_good_files_when_one_is_broken(tmp_path: Path, mod: str) -> None:
    write(tmp_path, steps_yaml(mod), "good.yaml")
    write(tmp_path, "name: other\n" + steps_yaml(mod), "also-good.yml")
    write(tmp_path, "steps: [unclosed\n", "broken.yaml")
    write(tmp_path, "not: [a definition", "notes.txt")

    catalog = load_directory(tmp_path)

    assert sorted(catalog.definitions) == ["good", "other"]
    assert len(catalog.errors) == 1
    assert catalog.errors[0].source == str(tmp_path / "broken.yaml")


def test_duplicate_workflow_name_is_an_error_for_the_second_file(tmp_path: Path, mod: str) -> None:
    write(tmp_path, "name: same\n" + steps_yaml(mod), "a.yaml")
    write(tmp_path, "name: same\n" + steps_yaml(mod), "b.yaml")

    catalog = load_directory(tmp_path)

    assert catalog.definitions["same"].source == str(tmp_path / "a.yaml")
    [err] = catalog.errors
    assert (err.source, err.field) == (str(tmp_path / "b.yaml"), "name")
    assert "already used by" in str(err)
    assert "a.yaml" in str(err)


def test_missing_directory(tmp_path: Path) -> None:
    catalog = load_directory(tmp_path / "nope")

    assert catalog.definitions == {}
    [err] = catalog.errors
    assert "does not exist" in str(err)
    assert "nope" in str(err)


def test_bundled_examples_load_without_errors() -> None:
    catalog = load_directory(WORKFLOWS_DIR)

    assert catalog.errors == []
    blog, brief = catalog.definitions["blog-post"], catalog.definitions["market-brief"]
    assert blog.keys() == ["outline", "draft", "polish", "stats"]
    assert (blog.step("draft").alternatives, blog.step("draft").select) == (3, "human")
    assert blog.dependents("draft") == ["polish", "stats"]
    assert [(i.name, i.type, i.required, i.default) for i in blog.inputs] == [
        ("topic", "string", True, None),
        ("tone", "choice", False, "friendly"),
        ("words", "integer", False, 300),
    ]
    assert [s.needs for s in brief.steps] == [(), (), (), ("research", "competitors", "pricing")]


def test_parse_definition_without_resolving_calls() -> None:
    raw = {"steps": [{"key": "a", "call": "not_imported:fn"}]}
    defn = parse_definition(raw, "<python>", name="py", resolve_calls=False)

    assert defn.name == "py"
    with pytest.raises(DefinitionError, match="not_imported"):
        parse_definition(raw, "<python>", name="py")


# --- resolve_call -----------------------------------------------------------------------------------


def test_resolve_call_imports_from_workflows_dir_once(tmp_path: Path, mod: str) -> None:
    fn = resolve_call(f"{mod}:ok", tmp_path)
    again = resolve_call(f"{mod}:ok", tmp_path)

    assert fn is again
    assert fn(None) == "ok"
    assert sys.path.count(str(tmp_path.resolve())) == 1
    assert sys.path[0] == str(tmp_path.resolve())


def test_resolve_call_reports_nested_missing_import_as_import_failure(tmp_path: Path) -> None:
    name = f"steps_nested_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("import a_dependency_that_is_not_installed\n")

    with pytest.raises(CallError, match=f"importing module '{name}' failed: ModuleNotFoundError"):
        resolve_call(f"{name}:fn", tmp_path)


def test_call_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected 'module:function', got 'x'"):
        resolve_call("x", None)


@pytest.mark.parametrize("name", ["errors", "reload"])
def test_names_the_api_uses_for_its_own_paths_are_refused(tmp_path: Path, mod: str, name: str) -> None:
    err, _ = load_error(tmp_path, f"name: {name}\n" + steps_yaml(mod))

    assert (err.field, err.line) == ("name", 1)
    assert f"/api/workflows/{name}" in str(err)
