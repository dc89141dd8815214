"""The contract suite's entries for SQLiteStore (sync) and its async twin: each opens a fresh,
empty store as a ``StoreEnv`` (see tests/adapters/test_store_contract.py, which passes its
``Adapter`` and ``StoreEnv`` classes in, so this module does not import it).

Each store gets a new file in a directory of its own under the test run's temp dir, and runs on
a :class:`~fsm.clock.FakeClock`: the store reads it for every expiry decision, so the suite's
waits move that clock, and no test sleeps. The async store runs behind the suite's
``AsyncStoreFacade``, with a second SQLiteStore on the same file as its twin: what one writes,
the other (its own connections) reads.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from adapters.sqlite import SQLiteStore
from adapters.sqlite_async import AsyncSQLiteStore
from fsm.clock import FakeClock
from tests.adapters.async_facade import AsyncStoreFacade


def sqlite_adapters(adapter: Any, store_env: Any) -> dict[str, Any]:
    """Name -> ``adapter(tick=..., open=...)``: "sqlite" and "async-sqlite"."""
    return {
        "sqlite": adapter(tick=1.0, open=_opener(store_env, asynchronous=False)),
        "async-sqlite": adapter(tick=1.0, open=_opener(store_env, asynchronous=True)),
    }


def _opener(store_env: Any, *, asynchronous: bool) -> Callable[..., AbstractContextManager[Any]]:
    @contextmanager
    def open_env(tick: float, **options: Any) -> Iterator[Any]:
        with tempfile.TemporaryDirectory(prefix="fsm-sqlite-") as folder:
            path = Path(folder) / "fsm.db"
            clock = FakeClock()
            store: Any = SQLiteStore(path, clock=clock, **options)
            if asynchronous:
                twin = store
                store = AsyncStoreFacade(AsyncSQLiteStore(path, clock=clock, **options), twin)
            try:
                yield store_env(store, clock, tick=tick, advance=clock.advance)
            finally:
                store.close()

    return open_env
