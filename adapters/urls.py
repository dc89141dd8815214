"""One store URL, one store: what ``FSM_STORE`` / ``--store`` may name, everywhere a URL is
taken (``fsm serve``, ``fsm chat --store``, every operator command).

- ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``, ``redis+sentinel://``:
  :class:`~adapters.redis.RedisStore` (keys under the namespace);
- ``sqlite:///relative.db``, ``sqlite:////absolute.db``: :class:`~adapters.sqlite.SQLiteStore`,
  a file on this host (every process of the host may share it);
- ``postgresql://`` or ``postgres://``: :class:`~adapters.postgres.PostgresStore` (the
  ``postgres`` extra: psycopg 3 and its pool).

The namespace keeps bots apart on one Redis; on SQL the file, or the PostgreSQL schema
(``?schema=``, default ``fsm``), does: the namespace is not used there. The async twins are
opened by :func:`open_async_store`. A URL of another scheme is a ``ValueError`` that lists
these.
"""

from __future__ import annotations

from typing import Literal

from adapters.redis_keys import DEFAULT_NAMESPACE
from fsm.store import AsyncStore, Store

Kind = Literal["redis", "sqlite", "postgres"]

_SCHEMES: dict[str, Kind] = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
    "redis+sentinel": "redis",
    "rediss+sentinel": "redis",
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
}


def store_kind(url: str) -> Kind:
    """Which store ``url`` names; ``ValueError`` for another scheme."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    kind = _SCHEMES.get(scheme)
    if kind is None:
        known = "redis://, rediss://, unix://, redis+cluster://, redis+sentinel://, sqlite:///, "
        raise ValueError(f"not a store URL (a store URL starts {known}postgresql://)")
    return kind


def open_store(url: str, *, namespace: str = DEFAULT_NAMESPACE) -> Store:
    """The sync store ``url`` names (nothing is sent yet: it connects on first use)."""
    kind = store_kind(url)
    if kind == "sqlite":
        from adapters.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if kind == "postgres":
        _needs_psycopg()
        from adapters.postgres import PostgresStore

        return PostgresStore.from_url(url)
    from adapters.redis import RedisStore

    return RedisStore.from_url(url, namespace=namespace)


def open_async_store(url: str, *, namespace: str = DEFAULT_NAMESPACE) -> AsyncStore:
    """The async store ``url`` names, for :class:`fsm.AsyncEngine` (``fsm serve``)."""
    kind = store_kind(url)
    if kind == "sqlite":
        from adapters.sqlite_async import AsyncSQLiteStore

        return AsyncSQLiteStore.from_url(url)
    if kind == "postgres":
        _needs_psycopg()
        from adapters.postgres_async import AsyncPostgresStore

        return AsyncPostgresStore.from_url(url)
    from adapters.redis_async import AsyncRedisStore

    return AsyncRedisStore.from_url(url, namespace=namespace)


def _needs_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"a postgresql:// store needs the postgres extra ({exc.name} is missing): "
            "pip install -e '.[postgres]' in a checkout"
        ) from None
