"""Tests of what exists only on PostgreSQL: collected only when the suite runs there
(`STEPDECK_TEST_DB=postgres`), and not collected at all on SQLite (rather than reported as skipped)."""

from tests import pgdb

collect_ignore_glob = [] if pgdb.ENABLED else ["test_*.py"]
