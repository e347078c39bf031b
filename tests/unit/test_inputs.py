"""Checking the inputs a run is started with (engine/inputs.py, through engine.definitions)."""

from typing import Any

import pytest

from engine.definitions import InputError, WorkflowDef, parse_definition, validate_inputs
from engine.inputs import InputDeclError, check_value, parse_input
from tests.bad_values import bad_values


def workflow(**inputs: Any) -> WorkflowDef:
    """A one-step workflow declaring `inputs`, built without importing any step function."""
    raw = {"inputs": inputs, "steps": [{"key": "a", "call": "unused:fn"}]}
    return parse_definition(raw, "<test>", name="t", resolve_calls=False)


BLOG = workflow(
    topic="string",
    tone={"type": "choice", "options": ["friendly", "formal", "playful"], "default": "friendly"},
    words={"type": "integer", "default": 300},
)
TYPED = workflow(
    s={"type": "string", "required": False},
    t={"type": "text", "required": False},
    i={"type": "integer", "required": False},
    n={"type": "number", "required": False},
    b={"type": "boolean", "required": False},
    c={"type": "choice", "options": ["x", "y"], "required": False},
    j={"type": "json", "required": False},
)


def problems(defn: WorkflowDef, raw: dict[str, Any], *, from_strings: bool = False) -> dict[str, str]:
    with pytest.raises(InputError) as info:
        validate_inputs(defn, raw, from_strings=from_strings)
    for name, message in info.value.problems.items():
        assert f"{name}: {message}" in str(info.value), "the message lists every problem"
    return info.value.problems


def test_defaults_are_filled_in() -> None:
    assert validate_inputs(BLOG, {"topic": "Tests"}) == {"topic": "Tests", "tone": "friendly", "words": 300}


def test_given_values_win_over_defaults() -> None:
    values = validate_inputs(BLOG, {"topic": "Tests", "tone": "playful", "words": 50})

    assert values == {"topic": "Tests", "tone": "playful", "words": 50}


def test_optional_inputs_without_default_are_none() -> None:
    assert validate_inputs(TYPED, {}) == dict.fromkeys("stinbcj")


def test_null_counts_as_not_given() -> None:
    assert validate_inputs(BLOG, {"topic": "x", "words": None})["words"] == 300
    assert problems(BLOG, {"topic": None}) == {"topic": "required input missing"}


def test_json_defaults_are_copied_per_run() -> None:
    defn = workflow(data={"type": "json", "default": {"tags": ["a"]}})

    first = validate_inputs(defn, {})
    first["data"]["tags"].append("mutated by a step")

    assert validate_inputs(defn, {}) == {"data": {"tags": ["a"]}}


def test_all_problems_are_reported_at_once() -> None:
    found = problems(BLOG, {"tone": "grumpy", "words": "many", "colour": "red"})

    assert found == {
        "colour": "unknown input (known: topic, tone, words)",
        "topic": "required input missing",
        "tone": "'grumpy' is not one of: friendly, formal, playful",
        "words": "expected an integer, got string",
    }
    with pytest.raises(ValueError, match=r"^invalid inputs: colour: unknown input"):
        validate_inputs(BLOG, {"tone": "grumpy", "words": "many", "colour": "red"})


def test_unknown_input_on_a_workflow_without_inputs() -> None:
    assert problems(workflow(), {"x": 1}) == {"x": "unknown input (known: none: this workflow takes no inputs)"}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("s", 5, "expected a string, got integer"),
        ("s", "nul\x00byte", "must not contain a NUL character"),
        ("t", "multi\nline\x00", "must not contain a NUL character"),
        ("t", ["x"], "expected a string, got list"),
        ("i", True, "expected an integer, got boolean"),
        ("i", 2.0, "expected an integer, got number"),
        ("i", "3", "expected an integer, got string"),
        ("n", False, "expected a number, got boolean"),
        ("n", "1.5", "expected a number, got string"),
        ("n", float("inf"), "expected a finite number, got inf"),
        ("b", 1, "expected true or false, got integer"),
        ("b", "true", "expected true or false, got string"),
        ("c", "z", "'z' is not one of: x, y"),
        ("c", 1, "expected a string, got integer"),
        ("j", {1, 2}, "not a JSON value"),
        ("j", float("nan"), "not a JSON value"),
    ],
)
def test_wrong_types(name: str, value: Any, message: str) -> None:
    found = problems(TYPED, {name: value})

    assert list(found) == [name]
    assert found[name].startswith(message)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("s", "line one\nline two"),
        ("t", "line one\nline two"),
        ("i", -3),
        ("n", 2),
        ("n", 2.5),
        ("b", False),
        ("c", "y"),
        ("j", {"a": [1, None, "x"]}),
        ("j", "just a string"),
    ],
)
def test_right_types_pass_unchanged(name: str, value: Any) -> None:
    assert validate_inputs(TYPED, {name: value})[name] == value


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("s", "42", "42"),
        ("t", "true", "true"),
        ("c", "x", "x"),
        ("i", "42", 42),
        ("i", " -7 ", -7),
        ("n", "2", 2),
        ("n", "2.5", 2.5),
        ("n", "1e3", 1000.0),
        ("b", "true", True),
        ("b", "YES", True),
        ("b", "1", True),
        ("b", "false", False),
        ("b", "No", False),
        ("b", "0", False),
        ("j", '{"a": [1, 2]}', {"a": [1, 2]}),
        ("j", "3", 3),
        ("j", '"quoted"', "quoted"),
    ],
)
def test_from_strings_coerces(name: str, text: str, expected: Any) -> None:
    value = validate_inputs(TYPED, {name: text}, from_strings=True)[name]

    assert value == expected
    assert type(value) is type(expected)


@bad_values(
    "name, text, message",
    {
        "i": {"abc": "'abc' is not an integer", "2.5": "'2.5' is not an integer", "": "'' is not an integer"},
        "n": {"abc": "'abc' is not a number", "nan": "expected a finite number, got nan"},
        "b": {"maybe": "'maybe' is not a boolean (use true/false, yes/no or 1/0)"},
        "c": {"z": "'z' is not one of: x, y"},
        "s": {"a\x00b": "must not contain a NUL character"},
    },
)
def test_from_strings_errors(name: str, text: str, message: str) -> None:
    assert problems(TYPED, {name: text}, from_strings=True) == {name: message}


def test_from_strings_bad_json() -> None:
    found = problems(TYPED, {"j": "{not json"}, from_strings=True)

    assert found["j"].startswith("'{not json' is not valid JSON: ")


def test_from_strings_reports_every_bad_value_and_fills_defaults() -> None:
    assert validate_inputs(BLOG, {"topic": "T", "words": "120"}, from_strings=True) == {
        "topic": "T",
        "tone": "friendly",
        "words": 120,
    }
    assert problems(BLOG, {"words": "lots", "tone": "loud"}, from_strings=True) == {
        "topic": "required input missing",
        "tone": "'loud' is not one of: friendly, formal, playful",
        "words": "'lots' is not an integer",
    }


def test_integer_and_number_inputs_take_min_and_max() -> None:
    words = parse_input("words", {"type": "integer", "min": 1, "max": 5000, "default": 300})
    assert (words.min, words.max) == (1, 5000)
    assert check_value(words, 1) == 1 and check_value(words, 5000) == 5000
    with pytest.raises(ValueError, match="at least 1, got -5"):
        check_value(words, -5)
    with pytest.raises(ValueError, match="at most 5000"):
        check_value(words, 5001)
    with pytest.raises(ValueError, match="at least 1"):
        check_value(words, "0", from_strings=True)
    ratio = parse_input("ratio", {"type": "number", "min": 0, "max": 1.5})
    assert check_value(ratio, 0.5) == 0.5


@pytest.mark.parametrize(
    ("decl", "field", "message"),
    [
        ({"type": "string", "min": 1}, "min", "only allowed for types integer and number"),
        ({"type": "integer", "max": 2.5}, "max", "expected an integer"),
        ({"type": "integer", "min": 10, "max": 1}, "min", "min 10 is above max 1"),
        ({"type": "integer", "min": 10, "default": 3}, "default", "at least 10"),
    ],
)
def test_bad_bounds_are_declaration_errors(decl: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(InputDeclError, match=message) as caught:
        parse_input("n", decl)
    assert caught.value.field == field
