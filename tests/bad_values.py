"""One table shape for the parsers' bad-value tests (settings, inputs, input declarations, step fields)."""

from __future__ import annotations

import pytest


def bad_values(names: str, table: dict[str, dict[str, str]]) -> pytest.MarkDecorator:
    """Parametrize a test over `(where, value, message)`: `table` maps where a bad value goes (a variable, an
    input, a field) to each bad value there and the message it must give. Test ids read `where=value`."""
    rows = [(where, value, message) for where, values in table.items() for value, message in values.items()]
    return pytest.mark.parametrize(names, rows, ids=[f"{where}={value!r}" for where, value, _ in rows])
