"""The portable `?` placeholders become PostgreSQL's `$n`, never inside quoted text or names."""

import pytest

from engine.db.postgres import placeholders


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", "SELECT 1"),
        ("UPDATE runs SET status = ? WHERE id = ?", "UPDATE runs SET status = $1 WHERE id = $2"),
        ("SELECT '?' AS q, x FROM t WHERE a = ?", "SELECT '?' AS q, x FROM t WHERE a = $1"),
        (
            "SELECT \"odd?name\" FROM t WHERE a LIKE ? ESCAPE '\\'",
            "SELECT \"odd?name\" FROM t WHERE a LIKE $1 ESCAPE '\\'",
        ),
        ("SELECT 'it''s ?' WHERE a = ? AND b = ?", "SELECT 'it''s ?' WHERE a = $1 AND b = $2"),
    ],
)
def test_placeholders(sql: str, expected: str) -> None:
    assert placeholders(sql) == expected


def test_wide_integers_are_cast_to_bigint() -> None:
    assert placeholders("SELECT id FROM events WHERE run_id = ? AND id > ?", (2,)) == (
        "SELECT id FROM events WHERE run_id = $1 AND id > $2::bigint"
    )
