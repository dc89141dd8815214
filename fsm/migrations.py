"""Schema migrations: how a snapshot stored in an older *format* becomes the current one.

Two kinds of change reach a stored conversation, and both are migrated lazily, when a session is
loaded, and in bulk by ``fsm migrate`` (:mod:`fsm.ops.migrate`):

- the **snapshot schema** (``Snapshot.schema``, this module): the library's storage format. A
  migration ``N -> N+1`` is registered here with :func:`schema_migration`; it is pure and works
  on the snapshot as plain data (field name -> value, nested structs as dicts), because a record
  of an older schema need not decode into today's :class:`~fsm.snapshot.Snapshot`;
- the **flow version** (``Snapshot.flow_version``, :attr:`fsm.Flow.migrations`): a flow's own
  changes (a step renamed or removed), pure ``Snapshot -> Snapshot`` functions declared on the
  flow, applied by :mod:`fsm.flow_migrations`.

This module works on plain data only and imports neither :mod:`fsm.snapshot` nor
:mod:`fsm.flow`: the snapshot decoder calls it, so it must not depend on them.

>>> sorted(schema_migrations())
[1, 2]
>>> upgrade({"flow": "f", "stage": "s", "step": "x", "schema": 1}, 1)["schema"]
3
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fsm.errors import FsmError

#: The snapshot format this code writes (``Snapshot.schema``; re-exported by
#: :mod:`fsm.snapshot`). 3: schema 2's layout, with the fields it gained since (an outbox,
#: timers, the last inbound time) and replies of kinds an older release cannot read
#: (templates, files, places, reactions): a worker of that release refuses it as too new
#: (it answers 503 and a newer worker takes the message) instead of taking it for corrupt. 2:
#: each struct is a msgpack array in field order (field names are not stored: a session is
#: ~130 bytes smaller). 1: maps; still read. Raising it needs the migration to it registered
#: below.
SCHEMA_VERSION = 3

#: A schema migration: the snapshot of schema N as plain data, to schema N+1's.
SchemaMigration = Callable[[dict[str, Any]], dict[str, Any]]

_REGISTRY: dict[int, SchemaMigration] = {}


class MigrationError(FsmError):
    """A schema migration is missing or failed; the record is left as it is."""


def schema_migration(from_schema: int) -> Callable[[SchemaMigration], SchemaMigration]:
    """Register ``fn`` as the migration from schema ``from_schema`` to ``from_schema + 1``."""

    def register(fn: SchemaMigration) -> SchemaMigration:
        if from_schema < 1:
            raise ValueError(f"schemas start at 1, got {from_schema}")
        if from_schema in _REGISTRY and _REGISTRY[from_schema] is not fn:
            raise ValueError(f"a migration from schema {from_schema} is already registered")
        _REGISTRY[from_schema] = fn
        return fn

    return register


def schema_migrations() -> Mapping[int, SchemaMigration]:
    """The registered migrations, by the schema they migrate from."""
    return dict(_REGISTRY)


def upgrade(
    fields: dict[str, Any], from_schema: int, to_schema: int | None = None
) -> dict[str, Any]:
    """Apply the registered migrations from ``from_schema`` up to ``to_schema`` (default:
    :data:`SCHEMA_VERSION`); each must set ``schema`` to its target."""
    target = SCHEMA_VERSION if to_schema is None else to_schema
    schema = from_schema
    while schema < target:
        migrate = _REGISTRY.get(schema)
        if migrate is None:
            raise MigrationError(f"no migration from snapshot schema {schema} to {schema + 1}")
        try:
            fields = migrate(dict(fields))
        except Exception as exc:
            raise MigrationError(
                f"migration from snapshot schema {schema} failed: {type(exc).__name__}"
            ) from exc
        if fields.get("schema") != schema + 1:
            raise MigrationError(
                f"migration from snapshot schema {schema} did not set schema {schema + 1}"
            )
        schema += 1
    return fields


@schema_migration(1)
def _maps_to_arrays(fields: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 stores each struct as an array instead of a map (the field names are not
    stored: a session is ~130 bytes smaller). The fields are the same."""
    return {**fields, "schema": 2}


@schema_migration(2)
def _newer_replies(fields: dict[str, Any]) -> dict[str, Any]:
    """Schema 3 has schema 2's layout; what it adds (fields appended with defaults, new
    reply kinds) an older release must not read as its own, so its number is new. A schema 2
    record reads as it is."""
    return {**fields, "schema": 3}
