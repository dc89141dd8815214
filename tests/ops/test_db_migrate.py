"""``fsm db migrate``: a SQL store's schema made or migrated as a deploy step, on real servers
and files; Redis has none; an unreachable server exits 2 without the password."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
from click.testing import CliRunner

from adapters.postgres_schema import LATEST
from adapters.redis_server import free_port
from adapters.sqlite_schema import SCHEMA_VERSION
from fsm.cli import main
from tests import postgres_servers, redis_servers


def fsm(*argv: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(argv), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_postgres_schema_is_made_once_then_left_alone() -> None:
    server = postgres_servers.standalone()
    schema = postgres_servers.fresh_schema("dbm")
    url = f"{server.url}?schema={schema}"
    assert fsm("db", "migrate", "--store", url) == (
        0, f"schema made: version 0 -> {LATEST}\n", ""
    )  # fmt: skip
    with psycopg.connect(server.url) as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".fsm_schema ORDER BY 1').fetchall()
    assert [r[0] for r in rows] == list(range(1, LATEST + 1))
    assert fsm("db", "migrate", "--store", url) == (
        0, f"schema at version {LATEST}: nothing to do\n", ""
    )  # fmt: skip
    with psycopg.connect(server.url, autocommit=True) as conn:  # as made by an older release
        conn.execute(f'DELETE FROM "{schema}".fsm_schema WHERE version = {LATEST}')
        conn.execute(f'DROP TABLE "{schema}".limit_counted, "{schema}".limit_waiting')
    code, out, _ = fsm("db", "migrate", "--store", url)
    assert (code, out) == (0, f"schema migrated: version {LATEST - 1} -> {LATEST}\n")


def test_sqlite_file_is_made_then_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    assert fsm("db", "migrate", "--store", url)[:2] == (
        0, f"schema made: version 0 -> {SCHEMA_VERSION}\n"
    )  # fmt: skip
    assert (tmp_path / "bot.db").exists()
    assert fsm("db", "migrate", "--store", url)[:2] == (
        0, f"schema at version {SCHEMA_VERSION}: nothing to do\n"
    )  # fmt: skip


def test_redis_has_nothing_to_migrate() -> None:
    code, out, _ = fsm("db", "migrate", "--store", redis_servers.standalone().url)
    assert (code, out) == (0, "nothing to migrate: RedisStore keeps no schema\n")


def test_an_unreachable_server_exits_2_without_the_password() -> None:
    url = f"postgresql://bot:s3cret-pw@127.0.0.1:{free_port()}/bot?connect_timeout=2"
    code, out, err = fsm("db", "migrate", "--store", url)
    assert code == 2 and out == ""
    assert err.startswith("error: cannot migrate ") and "s3cret-pw" not in err


def test_a_schema_newer_than_the_code_is_left_alone_and_said() -> None:
    server = postgres_servers.standalone()
    schema = postgres_servers.fresh_schema("dbn")
    url = f"{server.url}?schema={schema}"
    assert fsm("db", "migrate", "--store", url)[0] == 0
    with psycopg.connect(server.url, autocommit=True) as conn:  # a later release migrated it
        conn.execute(f"INSERT INTO \"{schema}\".fsm_schema VALUES ({LATEST + 1}, 'later')")
    code, out, _ = fsm("db", "migrate", "--store", url)
    assert (code, out) == (1, f"schema at version {LATEST + 1}, newer than this code's "
                              f"({LATEST}): nothing done\n")  # fmt: skip


def test_a_sqlite_file_of_a_newer_schema_exits_2_saying_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    assert fsm("db", "migrate", "--store", url)[0] == 0
    with sqlite3.connect(tmp_path / "bot.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    code, out, err = fsm("db", "migrate", "--store", url)
    assert code == 2 and out == "" and "newer than this code knows" in err
