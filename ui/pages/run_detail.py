"""Placeholder until the page lands."""

from __future__ import annotations

from typing import Any


def register(*_: Any) -> None:
    pass
