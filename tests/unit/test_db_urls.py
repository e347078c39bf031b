"""SQLite URLs in every spelling users write reach Tortoise in the one form it handles."""

from pathlib import Path

import pytest

from engine.db import connected
from engine.store import fetch
from models.db import sqlite_path, tortoise_config, with_sqlite_pragmas
from models.schema import dsn


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
    small = tortoise_config("postgres://u@localhost:5432/test")["connections"]["default"]["credentials"]
    assert (small["minsize"], small["maxsize"], small["dsn"]) == ("1", "2", "postgresql://u@localhost:5432/test")
    own = tortoise_config("postgresql://u@db:5432/test?maxsize=8&minsize=3")["connections"]["default"]["credentials"]
    assert (own["minsize"], own["maxsize"]) == ("3", "8")


def test_libpq_parameters_go_to_the_dsn_and_tortoises_own_stay_with_tortoise() -> None:
    url = "postgresql://u:p%40ss@db:5433/test?sslmode=verify-full&sslrootcert=/etc/ca.pem&maxsize=8&schema=x"
    assert dsn(url) == "postgresql://u:p%40ss@db:5433/test?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
    connection = tortoise_config(url)["connections"]["default"]
    assert connection["engine"] == "models.pg_client"
    assert connection["credentials"] == {
        "host": "db",
        "port": 5433,
        "user": "u",
        "password": "p@ss",
        "database": "test",
        "minsize": "1",
        "maxsize": "8",
        "schema": "x",
        "dsn": dsn(url),
    }


async def test_four_slash_url_opens_the_file(tmp_path: Path) -> None:

    url = f"sqlite:///{tmp_path}/four.db"  # tmp_path is absolute: four slashes in all
    async with connected(url):
        assert (await fetch("SELECT count(*) AS n FROM runs"))[0]["n"] == 0
    assert (tmp_path / "four.db").stat().st_size > 0
