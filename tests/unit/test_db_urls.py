"""SQLite URLs in every spelling users write reach Tortoise in the one form it handles."""

from pathlib import Path

import pytest

from engine.db import connected
from engine.store import fetch
from models.db import sqlite_path, tortoise_config, with_sqlite_pragmas


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite://data/stepdeck.db", Path("data/stepdeck.db")),
        ("sqlite:///tmp/x/s.db", Path("/tmp/x/s.db")),
        ("sqlite:////tmp/x/s.db", Path("/tmp/x/s.db")),
        ("sqlite://:memory:", None),
        ("postgres://localhost/test", None),
    ],
)
def test_sqlite_path(url: str, path: Path | None) -> None:
    assert sqlite_path(url) == path


def test_pragmas_added_and_user_values_win() -> None:
    url = with_sqlite_pragmas("sqlite:////tmp/x/s.db?busy_timeout=500")
    assert url.startswith("sqlite:///tmp/x/s.db?")
    assert "journal_mode=WAL" in url and "synchronous=NORMAL" in url and "foreign_keys=ON" in url
    assert "busy_timeout=500" in url and "busy_timeout=10000" not in url


def test_a_postgresql_url_gets_a_small_pool_for_tortoise_unless_it_sets_one() -> None:
    # Tortoise keeps the schema and a few simple queries: its connections count against max_connections.
    assert (
        tortoise_config("postgres://u@localhost:5432/test")["connections"]["default"]
        == "postgres://u@localhost:5432/test?minsize=1&maxsize=2"
    )
    assert (
        tortoise_config("postgresql://u@db:5432/test?maxsize=8&minsize=3")["connections"]["default"]
        == "postgresql://u@db:5432/test?minsize=3&maxsize=8"
    )


async def test_four_slash_url_opens_the_file(tmp_path: Path) -> None:

    url = f"sqlite:///{tmp_path}/four.db"  # tmp_path is absolute: four slashes in all
    async with connected(url):
        assert (await fetch("SELECT count(*) AS n FROM runs"))[0]["n"] == 0
    assert (tmp_path / "four.db").stat().st_size > 0
