"""``fsm migrate``: rewrite every session written by an older snapshot schema or flow version,
in bulk, while the bot runs.

The engine already migrates a session lazily when its user writes again; this is for the rest
(sessions of users who have not come back), so old formats can be retired. Each session is
rewritten by compare-and-set on the version it was read at, one version up, with its TTL left
unchanged and a ``migrate`` history entry. A session the bot changes meanwhile is re-read
(the engine will have migrated it); one whose lease a worker holds is left for the next run.
Runs are idempotent, so an interrupted run is resumed by running it again: sessions already
current are only read.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec

from fsm.clock import Clock
from fsm.flow import FlowSpec
from fsm.ops.recover import DEFAULT_TTL
from fsm.ops.validate import MIGRATABLE, diagnose_view, is_reserved
from fsm.records import HistoryEntry, SaveStatus, SessionView
from fsm.snapshot import encode_snapshot
from fsm.store import Store, operator_store


class Step(enum.Enum):
    MIGRATED = "migrated"  # rewritten (or, in a dry run, would be)
    CURRENT = "current"  # already at the current schema and flow version
    BUSY = "busy"  # a worker held the lease: left for the next run
    INVALID = "invalid"  # does not decode or fit the flow: reported, left as it is (fsm check)
    GONE = "gone"  # expired or deleted while the run went on


@dataclass(frozen=True, slots=True)
class Migrated:
    user_key: str
    step: Step
    detail: str = ""
    from_schema: int | None = None
    from_flow_version: int | None = None


@dataclass
class MigrationReport:
    counts: Counter[Step] = field(default_factory=Counter)
    problems: list[Migrated] = field(default_factory=list)

    @property
    def scanned(self) -> int:
        return sum(self.counts.values())


def migrate_one(
    store: Store,
    spec: FlowSpec,
    view: SessionView,
    *,
    clock: Clock,
    dry_run: bool = False,
    source: str = "fsm migrate",
    attempts: int = 3,
) -> Migrated:
    """Migrate one session (read as ``view``) if it needs it."""
    store = operator_store(store)
    user_key = view.user_key
    for _ in range(attempts):
        found = diagnose_view(view, spec, now=clock.now())
        if found.snapshot is None or found.problem not in MIGRATABLE:
            return Migrated(user_key, Step.INVALID, found.reason)
        if not found.needs_migration:
            return Migrated(user_key, Step.CURRENT)
        old_schema, old_flow = found.stored_schema, found.stored_flow_version
        if view.lock is not None:
            return Migrated(user_key, Step.BUSY, f"lease held for {view.lock.ttl:.1f}s more")
        if dry_run:
            return Migrated(user_key, Step.MIGRATED, "dry run", old_schema, old_flow)
        now = clock.now()
        version = view.record.version + 1
        snapshot = msgspec.structs.replace(found.snapshot, version=version)
        result = store.save(
            user_key,
            encode_snapshot(snapshot, user_key=user_key),
            version=version,
            expected_version=view.record.version,
            expected_tag=view.record.tag,
            ttl=view.ttl if view.ttl and view.ttl > 0 else DEFAULT_TTL,
            history=HistoryEntry(
                version=version,
                from_stage=found.stored.stage if found.stored is not None else "?",
                to_stage=snapshot.stage,
                event=f"migrate schema {old_schema}->{snapshot.schema} "
                f"flow {old_flow}->{snapshot.flow_version}",
                update_from=source,
                at=now,
                from_step=found.stored.step if found.stored is not None else "",
                to_step=snapshot.step,
            ),
        )
        if result.status is SaveStatus.SAVED:
            return Migrated(user_key, Step.MIGRATED, "", old_schema, old_flow)
        if result.status is SaveStatus.LOCKED:
            return Migrated(user_key, Step.BUSY, "a worker took the lease")
        fresh = store.session_view(user_key)  # changed meanwhile: look again
        if fresh is None:
            return Migrated(user_key, Step.GONE)
        view = fresh
    return Migrated(user_key, Step.BUSY, f"changed {attempts} times while migrating")


def migrate_sessions(
    store: Store,
    spec: FlowSpec,
    *,
    clock: Clock,
    dry_run: bool = False,
    limit: int | None = None,
    batch: int = 500,
    source: str = "fsm migrate",
    progress: Callable[[Migrated], None] | None = None,
) -> MigrationReport:
    """Migrate every session that needs it (at most ``limit`` rewrites); ``progress`` is called
    once per session scanned. Invalid sessions are reported in ``problems`` and skipped."""
    store = operator_store(store)
    report = MigrationReport()
    for outcome in _each(store, spec, clock, dry_run, batch, source):
        report.counts[outcome.step] += 1
        if outcome.step in (Step.INVALID, Step.BUSY):
            report.problems.append(outcome)
        if progress is not None:
            progress(outcome)
        if limit is not None and report.counts[Step.MIGRATED] >= limit:
            break
    return report


def _each(
    store: Store, spec: FlowSpec, clock: Clock, dry_run: bool, batch: int, source: str
) -> Iterator[Migrated]:
    for view in store.sessions(batch=batch):
        if not is_reserved(view.user_key):
            yield migrate_one(store, spec, view, clock=clock, dry_run=dry_run, source=source)
