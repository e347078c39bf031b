"""Errors about the database itself (as opposed to the work recorded in it)."""


class DatabaseUnavailable(RuntimeError):
    """The database cannot be opened, migrated or written; the message says why, for a person."""
