"""Errors that operations raise for people and scripts; the API maps them to 403, 404, 409 and 422.
`StepdeckError` (from `models/errors.py`) is the root of every error of ours, these included."""

from __future__ import annotations

from collections.abc import Mapping

from models.errors import StepdeckError

__all__ = ["Conflict", "Forbidden", "InvalidInput", "NotFound", "OperationError", "StepdeckError"]


class OperationError(StepdeckError):
    """Base of the errors an operation raises that a person can act on; the message says what to do."""


class NotFound(OperationError):
    """The run, step or workflow named does not exist."""


class Forbidden(OperationError):
    """The person or token may look but not act (a viewer)."""


class Conflict(OperationError):
    """The operation does not apply to the current state (e.g. rerun of a running run)."""


class InvalidInput(OperationError):
    """The request names things that exist but its values are wrong; `problems` maps field -> message."""

    def __init__(self, message: str, problems: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.problems = dict(problems or {})
