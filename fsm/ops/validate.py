"""Is a stored session valid for its flow, and if not, why: the checks ``fsm check`` runs and
``fsm recover`` repairs (:mod:`fsm.ops.recover`).

A session is checked as the engine would read it (decode, flow migrations, the flow's graph),
plus what the engine would only find out on the user's next message: an expired token in a
protected stage. Nothing here writes.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fsm import snapshot as snapshots
from fsm.errors import CorruptSnapshot, SchemaTooNew
from fsm.flow import FlowSpec
from fsm.flow_migrations import apply_flow_migrations
from fsm.migrations import MigrationError
from fsm.records import Record, SessionView
from fsm.snapshot import NEWER_FLOW_WINDOW, VERSION_LIMIT, Snapshot, decode_snapshot, stored_schema
from fsm.store import Store, operator_store

#: User keys that start with NUL are the library's own (the health probe's); the engine refuses
#: them as user ids, so no conversation can have one.
RESERVED_PREFIX = "\x00"


def is_reserved(user_key: str) -> bool:
    return user_key.startswith(RESERVED_PREFIX)


class Problem(enum.Enum):
    """What is wrong with a session, from worst to mildest."""

    UNDECODABLE = "undecodable"  # not a snapshot at all, or wrong types (msgspec's $.path)
    SCHEMA_TOO_NEW = "schema-too-new"  # written by newer code: not ours to judge or rewrite
    VERSION_MISMATCH = "version-mismatch"  # the snapshot's version is not the stored one
    MIGRATION_FAILED = "migration-failed"  # a flow migration raised
    WRONG_FLOW = "wrong-flow"  # the snapshot belongs to another flow
    UNKNOWN_STAGE = "unknown-stage"  # a stage the flow does not declare
    IMPOSSIBLE_STEP = "impossible-step"  # a step its stage does not have (or a bad resume point)
    EXPIRED_TOKEN = "expired-token"  # in a protected stage with no valid token


#: Problems ``fsm recover`` leaves alone, even with ``--force``: the record is fine, and not
#: this code's to judge (written by newer code, or by another bot: rewritten as this flow's,
#: it would be lost, a pending action's idempotency key with it).
NOT_REPAIRABLE = frozenset({Problem.SCHEMA_TOO_NEW, Problem.WRONG_FLOW})
#: Verdicts under which a session's format can still be migrated: an expired token is the
#: engine's to handle (it sends the user to sign in), not a broken record.
MIGRATABLE = frozenset({None, Problem.EXPIRED_TOKEN})


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The verdict on one stored session.

    ``stored`` is the snapshot as written (decoded; older schemas read through the schema
    migrations), ``snapshot`` the same after the flow's migrations: what the engine would run
    on. Both are None when the bytes do not decode. ``stored_schema`` is the schema the bytes
    were written with."""

    user_key: str
    version: int
    problem: Problem | None
    reason: str
    snapshot: Snapshot | None
    stored_schema: int | None
    stored: Snapshot | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def stored_flow_version(self) -> int | None:
        return None if self.stored is None else self.stored.flow_version

    @property
    def needs_migration(self) -> bool:
        """Readable, but written by an older schema or flow version: ``fsm migrate`` rewrites
        it (an expired token does not stop that: the engine handles those)."""
        if self.snapshot is None or self.stored is None or self.problem not in MIGRATABLE:
            return False
        return (self.stored_schema or 0) < snapshots.SCHEMA_VERSION or (
            self.stored.flow_version < self.snapshot.flow_version
        )


def diagnose_view(view: SessionView, spec: FlowSpec, *, now: float) -> Diagnosis:
    """:func:`diagnose` for a session read with :meth:`~fsm.store.Store.sessions`: a key
    that holds no session value at all (``view.error``) is undecodable, and says why."""
    if view.error:
        return Diagnosis(view.user_key, 0, Problem.UNDECODABLE, view.error, None, None)
    return diagnose(view.user_key, view.record, spec, now=now)


def diagnose(user_key: str, record: Record, spec: FlowSpec, *, now: float) -> Diagnosis:
    """Check one stored record against ``spec`` at time ``now``."""
    schema = stored_schema(record.payload)
    stored: Snapshot | None = None

    def verdict(
        problem: Problem | None, reason: str, snapshot: Snapshot | None = None
    ) -> Diagnosis:
        return Diagnosis(user_key, record.version, problem, reason, snapshot, schema, stored)

    try:
        stored = decode_snapshot(record.payload, user_key=user_key)
    except SchemaTooNew as exc:
        return verdict(
            Problem.SCHEMA_TOO_NEW,
            f"snapshot {exc.what} {exc.schema} is newer than this code supports "
            f"({exc.supported}); upgrade this worker",
        )
    except CorruptSnapshot as exc:
        return verdict(Problem.UNDECODABLE, exc.detail + _looks_like(record.payload))
    if stored.version > VERSION_LIMIT:
        return verdict(
            Problem.UNDECODABLE,
            f"version {stored.version} is above the limit {VERSION_LIMIT}",
            stored,
        )
    if stored.version != record.version:
        return verdict(
            Problem.VERSION_MISMATCH,
            f"snapshot version {stored.version} != stored version {record.version}",
            stored,
        )
    if (
        stored.flow == spec.name
        and spec.version < stored.flow_version <= spec.version + NEWER_FLOW_WINDOW
    ):
        return verdict(
            Problem.SCHEMA_TOO_NEW,
            f"flow version {stored.flow_version} is newer than this code's {spec.version}",
            stored,
        )
    snapshot = stored
    if snapshot.flow == spec.name:
        try:
            snapshot, _ = apply_flow_migrations(snapshot, spec)
        except MigrationError as exc:
            return verdict(Problem.MIGRATION_FAILED, str(exc), stored)
    problem = spec.problem_with(snapshot)
    if problem is not None:
        kind = (
            Problem.UNDECODABLE  # a flow version no deploy wrote: corrupt
            if "`$.flow_version`" in problem
            else Problem.WRONG_FLOW
            if "`$.flow`" in problem
            else Problem.UNKNOWN_STAGE
            if "`$.stage`" in problem
            else Problem.IMPOSSIBLE_STEP
        )
        return verdict(kind, problem, snapshot)
    if spec.is_protected(snapshot.stage):
        auth = snapshot.auth
        if auth is None:
            return verdict(
                Problem.EXPIRED_TOKEN,
                f"protected stage {snapshot.stage!r} without a token",
                snapshot,
            )
        if auth.expires_at is not None and auth.expires_at <= now:
            return verdict(
                Problem.EXPIRED_TOKEN,
                f"token expired {now - auth.expires_at:.0f}s ago in protected stage "
                f"{snapshot.stage!r}",
                snapshot,
            )
    return verdict(None, "ok", snapshot)


def _looks_like(raw: bytes) -> str:
    """A hint for bytes that are not msgpack at all: most often another program's JSON."""
    if raw[:1] in (b"{", b"["):
        try:
            json.loads(raw)
        except (ValueError, RecursionError):
            return ""
        return " (the bytes are JSON, not a snapshot: written by another program?)"
    return ""


def check_store(
    store: Store,
    spec: FlowSpec,
    *,
    now: float,
    batch: int = 500,
    progress: Callable[[], None] | None = None,
) -> Iterator[Diagnosis]:
    """The verdict on every invalid session, streamed as the store is scanned (``progress``
    is called once per session checked)."""
    views = operator_store(store).sessions(batch=batch)  # refused here, not at the first row
    return _invalid(views, spec, now, progress)


def _invalid(
    views: Iterator[SessionView],
    spec: FlowSpec,
    now: float,
    progress: Callable[[], None] | None,
) -> Iterator[Diagnosis]:
    for view in views:
        if is_reserved(view.user_key):
            continue
        if progress is not None:
            progress()
        found = diagnose_view(view, spec, now=now)
        if not found.ok:
            yield found
