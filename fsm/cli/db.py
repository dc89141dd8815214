"""``fsm db migrate``: make or migrate a SQL store's schema now, as a deploy step, rather than
on a worker's first call."""

from __future__ import annotations

import click

from fsm.cli.common import (
    EXIT_PROBLEM,
    EXIT_UNAVAILABLE,
    main,
    open_store_unchecked,
    safe_url,
    store_options,
)
from fsm.errors import StoreUnavailable


@main.group()
def db() -> None:
    """The store's own schema (SQLite and PostgreSQL stores)."""


@db.command("migrate")
@store_options
def migrate_schema(store_url: str | None, namespace: str | None) -> None:
    """Make the store's tables and functions, or bring them to this code's schema version
    (one migrator at a time; running it again changes nothing). Workers do the same on first
    use; run it as a deploy step to do it once, with a role that may (the workers' may not).
    A store without a schema (Redis) has nothing to migrate."""
    try:
        store = open_store_unchecked(store_url, namespace)
        versions = store.migrate_schema()
    except StoreUnavailable as exc:
        click.echo(f"error: cannot migrate {safe_url(store_url or '')}: {exc.detail}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    if versions is None:
        click.echo(f"nothing to migrate: {type(store).__name__} keeps no schema")
        return
    found, now = versions
    if found > now:
        click.echo(f"schema at version {found}, newer than this code's ({now}): nothing done")
        raise SystemExit(EXIT_PROBLEM)
    if found == now:
        click.echo(f"schema at version {now}: nothing to do")
    else:
        click.echo(f"schema {'made' if found == 0 else 'migrated'}: version {found} -> {now}")
