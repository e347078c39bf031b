"""The root of every error Stepdeck raises, and the errors about the database itself (as opposed to the
work recorded in it). The root lives here, in the lowest layer, so that every layer can derive from it."""


class StepdeckError(Exception):
    """Every error of Stepdeck's own derives from this one (`tests/unit/test_errors.py` checks): a caller
    can tell ours from a library's or a step function's. Those that also derive from a built-in error
    (ValueError, RuntimeError) keep it, for callers that catch that."""


class DatabaseUnavailable(StepdeckError, RuntimeError):
    """The database cannot be opened, migrated or written; the message says why, for a person."""
