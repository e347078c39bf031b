"""Errors that operations raise for people and scripts; the API maps them to 403, 404, 409 and 422."""

from __future__ import annotations

from collections.abc import Mapping


class StepdeckError(Exception):
    """Base of the errors a person can act on; the message says what to do."""


class NotFound(StepdeckError):
    """The run, step or workflow named does not exist."""


class Forbidden(StepdeckError):
    """The person or token may look but not act (a viewer)."""


class Conflict(StepdeckError):
    """The operation does not apply to the current state (e.g. rerun of a running run)."""


class InvalidInput(StepdeckError):
    """The request names things that exist but its values are wrong; `problems` maps field -> message."""

    def __init__(self, message: str, problems: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.problems = dict(problems or {})
