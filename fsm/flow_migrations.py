"""Flow migrations: a snapshot written by an older version of a flow brought up to date.

A flow declares them (:attr:`fsm.Flow.migrations`, flow version -> ``Snapshot -> Snapshot``);
the engine applies them when it loads a session, and ``fsm migrate`` in bulk. The snapshot
*schema* (the library's storage format) is migrated by :mod:`fsm.migrations`, on plain data,
before a snapshot is typed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from fsm.migrations import MigrationError
from fsm.snapshot import Snapshot

if TYPE_CHECKING:
    from fsm.flow import FlowSpec


def apply_flow_migrations(snapshot: Snapshot, spec: FlowSpec) -> tuple[Snapshot, int]:
    """Bring a snapshot written by an older version of ``spec``'s flow up to date with the
    flow's migrations; returns it and how many versions it moved. Versions without a migration
    are taken as compatible. A migration cannot change the version chain (the store's) or the
    token (the auth events'). :class:`MigrationError` if one fails or returns a non-snapshot.
    """
    auth, version, moved = snapshot.auth, snapshot.version, 0
    while snapshot.flow_version < spec.version:
        start = snapshot.flow_version
        migrate = spec.migrations.get(start)
        if migrate is not None:
            try:
                migrated = migrate(snapshot)
            except Exception as exc:  # a migration bug: reported as such, the record is kept
                raise MigrationError(
                    f"migration from flow version {start} failed: {type(exc).__name__}"
                    " - at `$.flow_version`"
                ) from exc
            if not isinstance(migrated, Snapshot):
                raise MigrationError(
                    f"migration from flow version {start} returned "
                    f"{type(migrated).__name__}, not Snapshot - at `$.flow_version`"
                )
            snapshot = migrated
        snapshot = msgspec.structs.replace(
            snapshot, flow_version=start + 1, version=version, auth=auth
        )
        moved += 1
    return snapshot, moved
