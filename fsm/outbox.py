"""The outbox: replies kept with the state until the transport confirms them sent.

With ``outbox=True`` each save appends its replies to the snapshot's outbox
(:class:`~fsm.snapshot.Outgoing`, each with a random id), in the same compare-and-set as the
state that expects them, so a reply the channel could not take is sent again at the next
delivery, never lost. :meth:`Outbox.confirm_steps` drops the ones the channel accepted, by
compare-and-set like any save, with a history entry so the version chain stays whole.

With a *send lease* (``send_lease=`` seconds; the WhatsApp transport sets it), whoever sends a
user's outbox holds the user's lease while it does: the save that adds replies takes it in the
same write (:attr:`fsm.result.Result.lease`), and the confirmation frees it, so no other worker
sends the same replies, or applies the user's next message, meanwhile. The async engine can
defer a confirmation (:class:`Held`): it is then folded into the user's next save, or written
by itself a moment later (:meth:`fsm.AsyncEngine.sent`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable

import msgspec

from fsm.decide import Decision
from fsm.effects import Sleep, StoreCall
from fsm.engine_core import S, Steps, log
from fsm.errors import CorruptSnapshot, SchemaTooNew
from fsm.history import history_entry
from fsm.inflight import Held, Message, Sending
from fsm.inputs import check_key
from fsm.leases import Leasing
from fsm.migrations import MigrationError
from fsm.records import Loaded, Record, SaveResult, SaveStatus
from fsm.redaction import user_tail
from fsm.reply import Reply
from fsm.restore import Restoring
from fsm.snapshot import Outgoing, Snapshot, encode_snapshot
from fsm.store import lock_backoff

#: The most replies an outbox keeps pending for one user (a channel down for long while the
#: user goes on typing): past it the oldest are dropped, logged and counted, and the user is
#: told once (:data:`DROPPED_NOTICE`, first in the outbox).
MAX_OUTBOX = 64

#: The id prefix of the dropped-replies notice, so it is said once however often the outbox
#: overflows before it is sent.
_DROPPED = "dropped-"


def new_entry_id() -> str:
    """A random outbox entry id (64 bits): unique across failovers and restores."""
    return secrets.token_hex(8)


class Outbox(Restoring[S], Leasing[S]):
    """The protocol's outbox steps (see the module's doc)."""

    def confirm_steps(
        self,
        user_id: str,
        sent: Iterable[str],
        *,
        lease: str | None = None,
        release: bool = True,
    ) -> Steps[bool]:
        """Drop the outbox entries whose :attr:`~fsm.snapshot.Outgoing.key` is in ``sent``
        (the channel accepted them), by compare-and-set like any save, with a history entry
        ("sent") so the version chain stays whole. With ``lease`` (the send lease), the same
        write frees it (``release``) or renews it. True once none of them is pending; False
        if that could not be saved (they stay pending: sent again rather than lost)."""
        key = check_key(user_id)
        done = frozenset(sent)
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
                if lease is not None and release:
                    yield from self._release(key, lease)
                elif lease is not None:
                    return (yield from self._still_ours(key, lease))
                return True  # nothing of it left to drop
            assert record is not None
            saved = yield from self._save_confirm(key, record, current, done, lease, release)
            if saved.saved:
                return True
            if lease is not None and saved.status is SaveStatus.LOCKED:
                break  # our lease lapsed and another worker sends now: it decides
            ready = Loaded(saved.current)
            if saved.status is SaveStatus.LOCKED:
                yield Sleep(next(delays))  # an action runs for this user: let it finish
        self.stats.incr("outbox_confirm_failures")
        return False

    def take_outbox_steps(self, user_id: str) -> Steps[Sending | None]:
        """Take the user's send lease (waiting up to ``lock_wait``, as for a step with side
        effects) and what is pending under it; None when nothing is (the lease is not kept).
        A lease this process holds already (a deferred confirmation) is reused if it is still
        ours."""
        key = check_key(user_id)
        held = self._held.pop(key, None)  # ours now: its flush finds nothing to write
        m = Message(key, "", None, None, due=False)
        sent: set[str] = set()
        try:
            if held is not None and (yield from self._still_ours(key, held.lease)):
                m.owner, sent = held.lease, held.sent
                since = self._recent.tick()
                loaded = yield from self._timed("load", StoreCall("load", (key,), {}))
                self._remember(key, loaded.record, since)
            else:
                yield from self._lock(m)
                assert m.ready is not None
                loaded = m.ready
            current = self._confirmable(key, loaded.record)
        except BaseException:
            if m.owner is not None and sent:
                self._hold(key, Held(m.owner, sent, 0.0, done=True))
            elif m.owner is not None:
                yield from self._release(key, m.owner)
            raise
        pending = tuple(o for o in (current.outbox if current else ()) if o.key not in sent)
        assert m.owner is not None
        if pending:
            if sent:  # confirmed with what is sent next (AsyncEngine.sent)
                self._held[key] = Held(m.owner, sent, time.monotonic())
            return Sending(m.owner, pending, current.last_inbound if current else 0.0)
        if sent:
            self._hold(key, Held(m.owner, sent, time.monotonic(), done=True))
        else:
            yield from self._release(key, m.owner)
        return None

    def _still_ours(self, key: str, lease: str) -> Steps[bool]:
        """Renew a send lease this process holds; False if it lapsed (someone may hold the
        user's lease now)."""
        ttl = self.send_lease or self.lock_ttl
        return bool((yield StoreCall("extend_lock", (key, lease, ttl), {})))

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
        self,
        key: str,
        record: Record,
        current: Snapshot,
        done: frozenset[str],
        lease: str | None,
        release: bool,
    ) -> Steps[SaveResult]:
        keep = tuple(o for o in current.outbox if o.key not in done)
        new = msgspec.structs.replace(
            current,
            outbox=keep,
            version=current.version + 1,
            last_updated=self.clock.now(),
            update_from=self.source,
        )
        payload = encode_snapshot(new, user_key=key)
        options = {
            "version": new.version,
            "expected_version": record.version,
            "expected_tag": record.tag,
            "ttl": self._session_ttl_for(new),
            "history": history_entry(current, new, "sent"),
            "owner": lease,
        }
        if lease is not None and release:
            options["release"] = True
        elif lease is not None and self._lease_on_save:
            options["lease"] = self.send_lease or self.lock_ttl
        since = self._recent.tick()
        saved: SaveResult = yield from self._timed(
            "save", StoreCall("save", (key, payload), options)
        )
        if saved.saved:
            self._remember(key, Record(payload, new.version, saved.tag), since, new)
            self.stats.incr("outbox_confirmed", len(current.outbox) - len(keep))
        else:
            self._remember(key, saved.current, since)
        return saved

    def _with_outbox(self, m: Message, stored: Snapshot, decision: Decision) -> Decision:
        """``decision`` with its replies appended to the outbox of what is stored, less what
        this process sent under its send lease (``m.sent``: the confirmation folded into this
        save), the oldest dropped past :data:`MAX_OUTBOX` (counted, and said once)."""
        new = decision.snapshot
        added = tuple(
            Outgoing(new.version, index, m.message_id or "", reply, new_entry_id())
            for index, reply in enumerate(decision.replies)
        )
        kept = stored.outbox or m.carried
        if m.sent:
            kept = tuple(o for o in kept if o.key not in m.sent)
        outbox = self._bounded(m.key, kept + added)
        if outbox == new.outbox:
            return decision
        # A handler may build a Reply with a list of options: decode the stored outbox.
        return msgspec.structs.replace(
            decision,
            plain=False,
            snapshot=msgspec.structs.replace(new, outbox=outbox),
        )

    def _bounded(self, key: str, outbox: tuple[Outgoing, ...]) -> tuple[Outgoing, ...]:
        """``outbox`` within :data:`MAX_OUTBOX`: the newest kept, after one notice that
        earlier replies were dropped (a channel down for long while the user typed on)."""
        if len(outbox) <= MAX_OUTBOX:
            return outbox
        notice: Outgoing | None = outbox[0] if outbox[0].id.startswith(_DROPPED) else None
        rest: tuple[Outgoing, ...] = outbox[1:] if notice else outbox
        dropped: int = len(rest) - (MAX_OUTBOX - 1)
        self.stats.incr("outbox_dropped", dropped)
        log.error(
            "user %s: %d unsent replies dropped from the outbox (more than %d pending)",
            user_tail(key),
            dropped,
            MAX_OUTBOX,
        )
        if notice is None:
            first = rest[dropped]
            notice = Outgoing(
                first.version, -1, "", Reply(self.dropped_notice), _DROPPED + new_entry_id()
            )
        return (notice, *rest[dropped:])
