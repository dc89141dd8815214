"""The contract suite's entries for PostgresStore and AsyncPostgresStore: each opens a fresh,
empty store as a ``StoreEnv`` (see tests/adapters/test_store_contract.py, which passes its
``Adapter`` and ``StoreEnv`` classes in, so this module does not import it).

Every store gets a schema of its own on the session's server (tests/postgres_servers.py) and
runs on a ``FakeClock``: the store decides every expiry with the clock it is given, so the
suite's waits move that clock (one tick is one fake second) and take no real time. Stores sweep
expired rows every 5 ticks, so the whole suite also shows that sweeping never changes what a
store answers. Without PostgreSQL's binaries the entries skip, saying how to get them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from fsm.clock import FakeClock
from tests import postgres_servers

#: One test time unit: a second of the fake clock.
TICK = 1.0
SWEEP_EVERY = 5 * TICK


def _postgres_env(
    store_env: Any, *, asynchronous: bool
) -> Callable[..., AbstractContextManager[Any]]:
    @contextmanager
    def open_env(tick: float, **options: Any) -> Iterator[Any]:
        try:
            from adapters.postgres import PostgresStore
            from adapters.postgres_async import AsyncPostgresStore
        except ImportError as exc:  # the optional extra is not installed
            pytest.skip(f"psycopg is not installed ({exc}): pip install -e '.[postgres]'")
        from tests.adapters.async_facade import AsyncStoreFacade

        url = postgres_servers.standalone().url
        schema = postgres_servers.fresh_schema("contract")
        clock = FakeClock()
        options = {"sweep_interval": SWEEP_EVERY, "pool_max": 12, **options}
        store: Any = PostgresStore.from_url(url, schema=schema, clock=clock, **options)
        if asynchronous:
            astore = AsyncPostgresStore.from_url(url, schema=schema, clock=clock, **options)
            store = AsyncStoreFacade(astore, store)
        try:
            yield store_env(store, clock, tick=tick, advance=clock.advance)
        finally:
            store.close()

    return open_env


def postgres_adapters(adapter: Any, store_env: Any) -> dict[str, Any]:
    """Name -> ``adapter(tick=..., open=...)``: the sync store, and the async one behind the
    suite's facade with a sync store on the same schema as its twin."""
    return {
        "postgres": adapter(tick=TICK, open=_postgres_env(store_env, asynchronous=False)),
        "async-postgres": adapter(tick=TICK, open=_postgres_env(store_env, asynchronous=True)),
    }
