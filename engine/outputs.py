"""What a step function may return, checked before it is stored (pure functions)."""

from __future__ import annotations

import json
import math
from typing import Any

from engine.json_limits import MAX_JSON_DEPTH, json_problem
from models.errors import StepdeckError

MAX_OUTPUT_BYTES = 10 * 1024 * 1024
_json_text = json.JSONEncoder(ensure_ascii=False).encode  # made once: `json.dumps` with options makes one per call


class OutputError(StepdeckError, ValueError):
    """The step returned something that cannot be stored as its output."""


def normalize_outputs(result: Any, alternatives: int) -> list[Any]:
    """The list of outputs (one per alternative) of a step's return value, cleaned for storage."""
    if alternatives == 1:
        values = [result]
    elif isinstance(result, (list, tuple)) and len(result) == alternatives:
        values = list(result)
    else:
        got = f"a list of {len(result)}" if isinstance(result, (list, tuple)) else type(result).__name__
        raise OutputError(
            f"the step asks for {alternatives} alternatives: return a list of {alternatives} outputs, got {got}"
        )
    cleaned = [clean_json(v, f"alternative {i + 1}" if alternatives > 1 else "output") for i, v in enumerate(values)]
    size = len(_json_text(cleaned).encode())
    if size > MAX_OUTPUT_BYTES:
        raise OutputError(f"the output is {size:,} bytes, more than the limit of {MAX_OUTPUT_BYTES:,}")
    return cleaned


def clean_text(text: str) -> str:
    """Text safe to store: lone surrogates (which SQLite refuses) and NUL characters replaced."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def clean_json(value: Any, where: str = "output", depth: int = 0) -> Any:
    """A JSON value with its strings cleaned; anything else raises OutputError naming where it is."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if problem := json_problem(value, where):
            raise OutputError(problem)
        return value
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_JSON_DEPTH:
        raise OutputError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OutputError(f"{where}: {value} is not a finite number")
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (list, tuple)):
        return [clean_json(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise OutputError(f"{where}: dict keys must be strings, got {type(k).__name__} {k!r}")
            out[clean_text(k)] = clean_json(v, f"{where}.{k}", depth + 1)
        return out
    raise OutputError(f"{where}: {type(value).__name__} is not a JSON value (return text, numbers, lists or dicts)")
