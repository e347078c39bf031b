"""engine/outputs.py: what a step may return, checked and cleaned before it is stored."""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import pytest

from engine import outputs
from engine.outputs import MAX_OUTPUT_BYTES, OutputError, clean_json, clean_text, normalize_outputs


def test_one_alternative_wraps_the_value_whatever_it_is() -> None:
    assert normalize_outputs("text", 1) == ["text"]
    assert normalize_outputs(["a", "b"], 1) == [["a", "b"]]
    assert normalize_outputs({"k": 1}, 1) == [{"k": 1}]
    assert normalize_outputs(None, 1) == [None]


@pytest.mark.parametrize("value", [["a", "b", "c"], ("a", "b", "c")])
def test_n_alternatives_need_a_list_of_n(value: Any) -> None:
    assert normalize_outputs(value, 3) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("value", "got"),
    [(["only one"], "a list of 1"), (["a", "b", "c", "d"], "a list of 4"), ("text", "str"), ({"a": 1}, "dict")],
)
def test_a_wrong_number_of_alternatives_says_what_was_expected_and_got(value: Any, got: str) -> None:
    with pytest.raises(OutputError) as info:
        normalize_outputs(value, 3)
    assert str(info.value) == f"the step asks for 3 alternatives: return a list of 3 outputs, got {got}"


def test_lone_surrogates_and_nul_are_replaced_so_sqlite_can_store_them() -> None:
    bad = "a\ud800b\x00c"
    with pytest.raises(UnicodeEncodeError):
        bad.encode("utf-8")
    cleaned = clean_text(bad)
    assert cleaned == "a?b\ufffdc"
    cleaned.encode("utf-8")  # no longer raises
    with sqlite3.connect(":memory:") as conn:
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.execute(
            "INSERT INTO t VALUES (?)", (json.dumps(normalize_outputs({"k\ud800": [bad]}, 1), ensure_ascii=False),)
        )


def test_clean_json_cleans_nested_strings_and_keys() -> None:
    value = {"a\ud800": ["x\x00", {"b": "\udfff"}], "n": 1, "f": 1.5, "t": True, "z": None}
    cleaned = clean_json(value)
    assert cleaned == {"a?": ["x\ufffd", {"b": "?"}], "n": 1, "f": 1.5, "t": True, "z": None}
    json.dumps(cleaned, ensure_ascii=False).encode("utf-8")  # storable


def test_tuples_become_lists() -> None:
    assert clean_json((1, (2, 3))) == [1, [2, 3]]


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected_naming_where(number: float) -> None:
    with pytest.raises(OutputError, match=r"alternative 2\[1\]\.x: .* is not a finite number"):
        normalize_outputs(["ok", ["fine", {"x": number}]], 2)


def test_non_string_dict_keys_are_rejected() -> None:
    with pytest.raises(OutputError, match=r"output: dict keys must be strings, got int 1"):
        normalize_outputs({1: "one"}, 1)
    with pytest.raises(OutputError, match=r"output\.outer: dict keys must be strings, got tuple"):
        clean_json({"outer": {(1, 2): "x"}})


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", 1 + 2j])
def test_values_that_are_not_json_are_rejected(value: Any) -> None:
    with pytest.raises(OutputError, match=f"output: {type(value).__name__} is not a JSON value"):
        normalize_outputs(value, 1)


def test_an_output_over_the_size_cap_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "MAX_OUTPUT_BYTES", 100)
    assert normalize_outputs("x" * 90, 1) == ["x" * 90]  # 94 bytes with the JSON list around it
    with pytest.raises(OutputError, match=r"the output is 1,\d{3} bytes, more than the limit of 100"):
        normalize_outputs("é" * 600, 1)  # counted in UTF-8 bytes, not characters


def test_the_real_size_cap_is_ten_megabytes() -> None:
    assert MAX_OUTPUT_BYTES == 10 * 1024 * 1024
    with pytest.raises(OutputError, match="more than the limit"):
        normalize_outputs("x" * MAX_OUTPUT_BYTES, 1)


def test_output_error_is_a_value_error() -> None:
    assert issubclass(OutputError, ValueError)
