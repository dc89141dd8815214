"""Restoring a stored conversation: the record a pass loaded, made the snapshot to work on.

Absent: a new (or expired) conversation at the flow's initial stage, its version continuing the
old chain so no version is ever reused. Undecodable, or inconsistent with the flow: a
:class:`~fsm.errors.CorruptSnapshot`, which the protocol quarantines byte-for-byte. Written by
an older flow version: migrated, then checked again. Written by newer code:
:class:`~fsm.errors.SchemaTooNew`, touched by nobody.
"""

from __future__ import annotations

import msgspec

from fsm.effects import StoreCall
from fsm.engine_core import EngineCore, S, Steps, log
from fsm.errors import CorruptSnapshot, SchemaTooNew
from fsm.flow_migrations import apply_flow_migrations
from fsm.inflight import Restored
from fsm.migrations import MigrationError
from fsm.records import HistoryEntry, Record
from fsm.redaction import mask_user, user_tail
from fsm.reply import Reply
from fsm.snapshot import VERSION_LIMIT, Snapshot, decode_snapshot, encode_snapshot
from fsm.snapshot import chain_floor as _chain


class Restoring(EngineCore[S]):
    """The protocol's restore steps (see the module's doc)."""

    def _restore(self, key: str, record: Record | None, floor: int | None) -> Steps[Restored]:
        """The snapshot to apply the message to (:class:`CorruptSnapshot` if it is broken).

        ``floor`` is the version of a record this message quarantined: the restarted
        conversation continues above it, at the flow's safe stage."""
        if record is not None:
            return self._stored(key, record)
        # Continue the version chain of an expired or reset session, so a worker that stalled
        # on the old session can never compare-and-set onto the new one.
        last: list[HistoryEntry] = yield StoreCall("history", (key,), {"limit": 1})
        base = max(floor or 0, _chain(last[0].version) if last else 0)
        if floor is not None:  # we quarantined it: the reset notice is already said
            return Restored(self._fresh(self.spec.safe_stage, base), 0)
        fresh = self._fresh(self.spec.initial, base)
        if last:  # it existed and is gone: the session expired
            return Restored(fresh, 0, notices=(Reply(self.expired_notice),), expired=True)
        return Restored(fresh, 0)

    def _stored(self, key: str, record: Record) -> Restored:
        """The conversation ``record`` holds (:class:`CorruptSnapshot` if it is broken), with
        the claims of its token when this process verified them.

        Expiry is the engine's to decide, by its own clock: a conversation whose last save is
        ``session_ttl`` old or older is over, whatever the store still holds (a store's own
        expiry runs on its own clock: Redis's, not a test's fake one). So a conversation
        expires at the same moment on every store. A snapshot that does not say when it was
        saved (``last_updated`` 0) is left to the store's expiry."""
        snapshot = self._validated(key, record)
        if self._expired(snapshot):
            # A new conversation, saved over the stored one by compare-and-set, its version
            # continuing the chain (as when the store expired it).
            if snapshot.pending or snapshot.outbox:  # what the store's expiry drops unsaid
                self.stats.incr("expired_unfinished")
                log.warning(
                    "user %s: session expired with %s (idempotency key %s) and %d unsent "
                    "replies; starting over",
                    user_tail(key),
                    f"{snapshot.stage}.{snapshot.step} pending" if snapshot.pending else "nothing",
                    mask_user(snapshot.pending or "-", key),
                    len(snapshot.outbox),
                )
            fresh = self._fresh(self.spec.initial, record.version)
            notices = (Reply(self.expired_notice),)
            return Restored(
                fresh, record.version, record.tag, notices=notices, expired=True, fresh=True
            )
        claims = self._recent.claims(key, record)
        return Restored(snapshot, record.version, record.tag, record=record, claims=claims)

    def _expired(self, snapshot: Snapshot) -> bool:
        """Whether ``snapshot``'s last save is ``session_ttl`` old by the engine's clock (longer
        while a timer that extends the session is armed: :meth:`_session_ttl_for`; a
        snapshot that does not say when it was saved, ``last_updated`` 0, never is)."""
        saved_at = snapshot.last_updated
        return saved_at > 0 and self.clock.now() - saved_at >= self._session_ttl_for(snapshot)

    def _validated(self, key: str, record: Record) -> Snapshot:
        if record.version > VERSION_LIMIT:
            raise CorruptSnapshot(
                f"version {record.version} is above the limit {VERSION_LIMIT} - at `$.version`",
                raw=record.payload,
                user_key=key,
            )
        known = self._recent.snapshot(key, record)
        if known is not None:  # this process saved these very bytes: checked already
            return known
        snapshot = decode_snapshot(record.payload, user_key=key)
        if snapshot.version != record.version:  # so it is within the limit too
            raise CorruptSnapshot(
                f"snapshot version {snapshot.version} != stored version {record.version}"
                " - at `$.version`",
                raw=record.payload,
                user_key=key,
            )
        snapshot = self._migrated(key, snapshot, record)
        problem = self.spec.problem_with(snapshot)
        if problem is not None:
            raise CorruptSnapshot(problem, raw=record.payload, user_key=key)
        if snapshot.flow_version > self.spec.version:
            # Written by a newer deploy of this flow: not corrupt, just not ours to rewrite.
            raise SchemaTooNew(
                snapshot.flow_version, self.spec.version, user_key=key, what="flow version"
            )
        return snapshot

    def _migrated(self, key: str, snapshot: Snapshot, record: Record) -> Snapshot:
        """Apply the flow's migrations (:func:`fsm.flow_migrations.apply_flow_migrations`) to a
        snapshot written by an older flow version; the result is still checked against the
        flow. A migration that fails makes the record unreadable (quarantined, kept)."""
        try:
            snapshot, moved = apply_flow_migrations(snapshot, self.spec)
        except MigrationError as exc:
            raise CorruptSnapshot(str(exc), raw=record.payload, user_key=key) from exc
        if not moved:
            return snapshot
        self.stats.incr("migrated", moved)
        # Through its bytes once: what a migration wrote is then exactly what a load returns
        # (every snapshot the engine works on is), and bytes it cannot store are found here.
        try:
            return decode_snapshot(encode_snapshot(snapshot, user_key=key), user_key=key)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError, CorruptSnapshot) as exc:
            raise CorruptSnapshot(
                f"migrated snapshot cannot be stored: {type(exc).__name__}",
                raw=record.payload,
                user_key=key,
            ) from exc

    def _quarantine(self, key: str, record: Record, exc: CorruptSnapshot) -> Steps[bool]:
        """Move the bytes aside unchanged and report it; False if they changed meanwhile."""
        quarantine_id = yield StoreCall("quarantine", (key, record.payload, exc.detail), {})
        if quarantine_id is None:
            return False
        self.stats.incr("corrupt")
        log.warning(
            "user %s: corrupt snapshot quarantined as %s: %s",
            user_tail(key),
            quarantine_id,
            exc.detail,
        )
        return True

    def _readable(self, key: str, record: Record | None) -> Snapshot | None:
        if record is None:
            return None
        try:
            return decode_snapshot(record.payload, user_key=key)
        except CorruptSnapshot:
            return None  # reported on the next real message, which quarantines it

    def _pending_action(self, key: str, record: Record | None) -> Snapshot | None:
        """The stored snapshot if it is valid and waits at an action step, else None (a broken
        one is quarantined, with its notice, by the next new message)."""
        if record is None:
            return None
        try:
            snapshot = self._validated(key, record)
        except (CorruptSnapshot, SchemaTooNew):
            return None
        if self._expired(snapshot):  # over: the next message starts a new conversation
            return None
        return snapshot if self._decider.is_action(snapshot) else None
