"""Bounds on the JSON values runs carry (inputs, outputs): integers within 64 bits and nesting at most
MAX_JSON_DEPTH deep. Beyond them JSON encoders used by the API and the pages refuse the value, so one
stored value would break every read that includes it. Values are checked where they come in; reads
still show what an older version stored, bounded (`readable`)."""

from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
TOO_DEEP = "…(nested too deep to show)"
# A stored text that may need `readable`: a long run of digits, or enough brackets to be deep.
_LONG_NUMBER = re.compile(r"\d{19}")


def _at(path: str) -> str:
    return path if len(path) <= 60 else f"{path[:40]}…{path[-12:]}"


def json_problem(value: Any, where: str = "value") -> str | None:
    """Why `value` is not a storable JSON value under these bounds (None if it is). Iterative."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                return f"{_at(path)}: the integer {_short(item)} is beyond the 64-bit range (send it as a string)"
        elif isinstance(item, (list, tuple, dict)):
            if depth >= MAX_JSON_DEPTH:
                return f"{_at(path)}: nested more than {MAX_JSON_DEPTH} levels deep"
            if isinstance(item, dict):
                stack.extend((v, f"{path}.{k}", depth + 1) for k, v in item.items())
            else:
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
    return None


def _short(number: int) -> str:
    text = str(number) if number.bit_length() < 4000 else f"of {number.bit_length()} bits"
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} digits)"


def readable(value: Any, depth: int = 0) -> Any:
    """`value` with integers beyond 64 bits as strings and what is nested too deep replaced by a marker."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if INT_MIN <= value <= INT_MAX else str(value)
    if isinstance(value, (list, dict)) and depth >= MAX_JSON_DEPTH:
        return TOO_DEEP
    if isinstance(value, list):
        return [readable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: readable(v, depth + 1) for k, v in value.items()}
    return value


def load_stored(text: str | bytes) -> Any:
    """A JSON value read back from the database, bounded for any encoder (see `readable`)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"(the stored value could not be read: {type(exc).__name__})"
    raw = text if isinstance(text, str) else text.decode("utf-8", "replace")
    if _LONG_NUMBER.search(raw) or raw.count("[") + raw.count("{") > MAX_JSON_DEPTH:
        return readable(value)
    return value
