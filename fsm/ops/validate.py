"""Is a stored session valid for its flow, and if not, why: the checks ``fsm check`` runs and
``fsm recover`` repairs (:mod:`fsm.ops.recover`).

A session is checked as the engine would read it (decode, flow migrations, the flow's graph),
plus what the engine would only find out on the user's next message: an expired token in a
protected stage. Nothing here writes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from adapters.base import Record
from fsm.errors import CorruptSnapshot, SchemaTooNew
from fsm.flow import FlowSpec
from fsm.migrations import MigrationError, apply_flow_migrations
from fsm.snapshot import SCHEMA_VERSION, Snapshot, decode_snapshot, stored_schema

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


#: Problems ``fsm recover`` leaves alone: the record is fine, this code is too old for it.
NOT_REPAIRABLE = frozenset({Problem.SCHEMA_TOO_NEW})
#: Verdicts under which a session's format can still be migrated: an expired token is the
#: engine's to handle (it sends the user to sign in), not a broken record.
MIGRATABLE = frozenset({None, Problem.EXPIRED_TOKEN})


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The verdict on one stored session. ``snapshot`` is the decoded (and flow-migrated)
    snapshot when the bytes decode; ``stored_schema`` the schema it was written with."""

    user_key: str
    version: int
    problem: Problem | None
    reason: str
    snapshot: Snapshot | None
    stored_schema: int | None

    stored_flow_version: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def needs_migration(self) -> bool:
        """Valid, but written by an older schema or flow version: ``fsm migrate`` rewrites it."""
        if self.snapshot is None or self.problem not in MIGRATABLE:
            return False
        return (self.stored_schema or 0) < SCHEMA_VERSION or (
            self.stored_flow_version or 0
        ) < self.snapshot.flow_version


def diagnose(user_key: str, record: Record, spec: FlowSpec, *, now: float) -> Diagnosis:
    """Check one stored record against ``spec`` at time ``now``."""
    schema = stored_schema(record.payload)

    def bad(problem: Problem, reason: str, snapshot: Snapshot | None = None) -> Diagnosis:
        flow_version = None if snapshot is None else written_with
        return Diagnosis(user_key, record.version, problem, reason, snapshot, schema, flow_version)

    written_with: int | None = None

    try:
        snapshot = decode_snapshot(record.payload, user_key=user_key)
    except SchemaTooNew as exc:
        return bad(Problem.SCHEMA_TOO_NEW, str(exc).split(": ", 1)[-1])
    except CorruptSnapshot as exc:
        return bad(Problem.UNDECODABLE, exc.detail)
    if snapshot.version != record.version:
        return bad(
            Problem.VERSION_MISMATCH,
            f"snapshot version {snapshot.version} != stored version {record.version}",
            snapshot,
        )
    if snapshot.flow_version > spec.version:
        return bad(
            Problem.SCHEMA_TOO_NEW,
            f"flow version {snapshot.flow_version} is newer than this code's {spec.version}",
            snapshot,
        )
    written_with = snapshot.flow_version
    if snapshot.flow == spec.name:
        try:
            snapshot, _ = apply_flow_migrations(snapshot, spec)
        except MigrationError as exc:
            return bad(Problem.MIGRATION_FAILED, str(exc), snapshot)
    problem = spec.problem_with(snapshot)
    if problem is not None:
        kind = (
            Problem.WRONG_FLOW
            if "`$.flow`" in problem
            else Problem.UNKNOWN_STAGE
            if "`$.stage`" in problem
            else Problem.IMPOSSIBLE_STEP
        )
        return bad(kind, problem, snapshot)
    if spec.is_protected(snapshot.stage):
        auth = snapshot.auth
        if auth is None:
            return bad(Problem.EXPIRED_TOKEN, f"protected stage {snapshot.stage!r} without a token")
        if auth.expires_at is not None and auth.expires_at <= now:
            return bad(
                Problem.EXPIRED_TOKEN,
                f"token expired {now - auth.expires_at:.0f}s ago in protected stage "
                f"{snapshot.stage!r}",
                snapshot,
            )
    return Diagnosis(user_key, record.version, None, "ok", snapshot, schema, written_with)
