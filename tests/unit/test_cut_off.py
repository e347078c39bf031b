"""When a step reads as cut off at the token limit (the run page's flag, the API's `truncated`)."""

from __future__ import annotations

from engine.llm.record import LlmJson, llm_json
from engine.readmodel import cut_off


def record(*cut: bool) -> LlmJson | None:
    """A stored record, as the database gives it (only the keys that matter here)."""
    return llm_json({"truncated": any(cut), "alternatives": [{"index": i, "truncated": c} for i, c in enumerate(cut)]})


def test_one_output_cut_off_flags_the_step() -> None:
    assert cut_off(record(True), 0)
    assert cut_off(record(True), None)
    assert not cut_off(record(False), 0)
    assert not cut_off(None, None)


def test_before_a_choice_any_cut_alternative_flags_the_step() -> None:
    assert cut_off(record(False, True, False), None)


def test_after_a_choice_only_the_chosen_alternative_counts() -> None:
    assert not cut_off(record(False, True, False), 0), "an unselected alternative was cut, not the chosen one"
    assert cut_off(record(False, True, False), 1)
