"""The messaging limit counted in a SQL store's database (a SQLite file; a PostgreSQL of the
tests' own): ``fsm serve`` picks it on those stores, the same rules hold as in memory, processes
admitting at once share one count, and a database that cannot be reached admits nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.postgres_async import AsyncPostgresStore
from adapters.sqlite_async import AsyncSQLiteStore
from adapters.urls import open_async_store
from adapters.whatsapp.limits_sql import SQLiteLimitBackend, SQLMessagingLimit
from adapters.whatsapp.server import messaging_tracker
from fsm.errors import StoreUnavailable
from fsm.store import AsyncStore
from tests import postgres_servers

from .limit_rules import admit_in_processes, counts_unique_users_in_a_moving_day

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bot.db'}"
    else:
        schema = postgres_servers.fresh_schema("lim")
        yield f"{postgres_servers.standalone().url}?schema={schema}"


async def _with_store(url: str, limit: int, work: object) -> object:
    store: AsyncStore = open_async_store(url)
    try:
        tracker = messaging_tracker(limit, store)
        assert isinstance(tracker, SQLMessagingLimit)
        assert isinstance(store, AsyncSQLiteStore | AsyncPostgresStore)
        return await work(tracker)  # type: ignore[operator]
    finally:
        await store.aclose()


def test_the_rules_hold_in_sql(url: str) -> None:
    asyncio.run(_with_store(url, 2, counts_unique_users_in_a_moving_day))


def test_processes_admitting_at_once_share_one_count(url: str) -> None:
    admitted = admit_in_processes(url, "-", 5, str(ROOT))
    assert sum(admitted) == 5, admitted  # 40 distinct users, 4 processes: exactly 5 slots

    async def counted(tracker: SQLMessagingLimit) -> tuple[int, int]:
        return await tracker.counts(1000.0)

    assert asyncio.run(_with_store(url, 5, counted)) == (5, 0)


def test_an_unreadable_database_admits_nobody_new(tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()
    tracker = SQLMessagingLimit(SQLiteLimitBackend(str(tmp_path / "gone")), 5)  # a directory

    async def run() -> None:
        assert await tracker.admit("263770000001", 0.0) is None
        assert await tracker.hold("263770000001", 0.0) is False
        assert await tracker.ready(0.0) == []
        with pytest.raises(StoreUnavailable):
            await tracker.counts(0.0)

    asyncio.run(run())
