"""The outbox: replies kept with the state until the transport confirms them sent.

With ``outbox=True`` each save appends its replies to the snapshot's outbox
(:class:`~fsm.snapshot.Outgoing`), in the same compare-and-set as the state that expects them,
so a reply the channel could not take is sent again at the next delivery, never lost.
:meth:`Outbox.confirm_steps` drops the ones the channel accepted, by compare-and-set like any
save, with a history entry so the version chain stays whole.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from fsm.decide import Decision
from fsm.effects import Sleep, StoreCall
from fsm.engine_core import S, Steps, log
from fsm.errors import CorruptSnapshot, SchemaTooNew
from fsm.history import history_entry
from fsm.inflight import Message
from fsm.inputs import check_key
from fsm.migrations import MigrationError
from fsm.records import Loaded, Record, SaveResult, SaveStatus
from fsm.restore import Restoring
from fsm.snapshot import Outgoing, Snapshot, encode_snapshot
from fsm.store import lock_backoff

#: The most replies an outbox keeps pending for one user (a channel down for long while the
#: user goes on typing): past it the oldest are dropped, logged and counted.
MAX_OUTBOX = 64


class Outbox(Restoring[S]):
    """The protocol's outbox steps (see the module's doc)."""

    def confirm_steps(self, user_id: str, sent: Iterable[tuple[int, int]]) -> Steps[bool]:
        """Drop the outbox entries whose :attr:`~fsm.snapshot.Outgoing.key` is in ``sent``
        (the channel accepted them), by compare-and-set like any save, with a history entry
        ("sent") so the version chain stays whole. True once none of them is pending; False
        if that could not be saved (they stay pending: sent again rather than lost)."""
        key = check_key(user_id)
        done = frozenset(sent)
        if not done:
            return True
        ready: Loaded | None = self._recent.get(key)
        delays = lock_backoff()
        for _ in range(self.max_attempts):
            if ready is None:
                since = self._recent.tick()
                ready = yield from self._timed("load", StoreCall("load", (key,), {}))
                self._remember(key, ready.record, since)
            record, ready = ready.record, None
            current = self._confirmable(key, record)
            if current is None or not any(o.key in done for o in current.outbox):
                return True  # nothing of it left to drop
            keep = tuple(o for o in current.outbox if o.key not in done)
            new = msgspec.structs.replace(
                current,
                outbox=keep,
                version=current.version + 1,
                last_updated=self.clock.now(),
                update_from=self.source,
            )
            assert record is not None
            saved = yield from self._save_confirm(key, record, current, new)
            if saved.saved:
                self.stats.incr("outbox_confirmed", len(current.outbox) - len(keep))
                return True
            ready = Loaded(saved.current)
            if saved.status is SaveStatus.LOCKED:
                yield Sleep(next(delays))  # an action runs for this user: let it finish
        self.stats.incr("outbox_confirm_failures")
        return False

    def _confirmable(self, key: str, record: Record | None) -> Snapshot | None:
        """The stored snapshot whose outbox to trim; None if there is none we may rewrite
        (absent, corrupt, or newer code's: the next message deals with those)."""
        if record is None:
            return None
        try:
            return self._validated(key, record)
        except (CorruptSnapshot, SchemaTooNew, MigrationError):
            return None

    def _save_confirm(
        self, key: str, record: Record, current: Snapshot, new: Snapshot
    ) -> Steps[SaveResult]:
        payload = encode_snapshot(new, user_key=key)
        call = StoreCall(
            "save",
            (key, payload),
            {
                "version": new.version,
                "expected_version": record.version,
                "expected_tag": record.tag,
                "ttl": self.session_ttl,
                "history": history_entry(current, new, "sent"),
            },
        )
        since = self._recent.tick()
        saved: SaveResult = yield from self._timed("save", call)
        if saved.saved:
            self._remember(key, Record(payload, new.version, saved.tag), since, new)
        else:
            self._remember(key, saved.current, since)
        return saved

    def _with_outbox(self, m: Message, stored: Snapshot, decision: Decision) -> Decision:
        """``decision`` with its replies appended to the outbox of what is stored (the
        oldest dropped, and counted, past :data:`MAX_OUTBOX`)."""
        new = decision.snapshot
        added = tuple(
            Outgoing(new.version, index, m.message_id or "", reply)
            for index, reply in enumerate(decision.replies)
        )
        outbox = (stored.outbox or m.carried) + added
        if len(outbox) > MAX_OUTBOX:
            dropped = len(outbox) - MAX_OUTBOX
            self.stats.incr("outbox_dropped", dropped)
            log.error(
                "user %r: %d unsent replies dropped from the outbox (more than %d pending)",
                m.key,
                dropped,
                MAX_OUTBOX,
            )
            outbox = outbox[dropped:]
        if outbox == new.outbox:
            return decision
        # A handler may build a Reply with a list of options: decode the stored outbox.
        return msgspec.structs.replace(
            decision,
            plain=False,
            snapshot=msgspec.structs.replace(new, outbox=outbox),
        )
