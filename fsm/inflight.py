"""The state of one message in flight through the protocol, shared by its passes.

:class:`Message` is where a message stands (what is at hand, whether it is applied, the lease
it holds); :class:`Restored` is the conversation one pass applies it to. Both are msgspec
Structs (made in one C call), and neither shows the message's text or the lease in its repr.
"""

from __future__ import annotations

from typing import Any

import msgspec

from fsm.attachments import Attachment
from fsm.auth import Claims
from fsm.records import Due, Loaded, Record
from fsm.reply import Reply
from fsm.result import Result
from fsm.snapshot import Armed, Outgoing, Snapshot
from fsm.timers import Event


class Restored(msgspec.Struct, frozen=True):
    """The conversation a message applies to, and what the store holds now."""

    snapshot: Snapshot
    expected_version: int  # what the compare-and-set expects: 0 when nothing is stored
    expected_tag: str = ""  # and the write that stored it, where the store keeps tags
    notices: tuple[Reply, ...] = ()
    expired: bool = False
    record: Record | None = None  # the stored bytes it was read from (None: nothing stored)
    claims: Claims | None = None  # its token's claims, verified by this process, when known
    #: A new conversation although something is stored: the stored one expired by the
    #: engine's clock (:meth:`fsm.restore.Restoring._stored`), and the store still held it.
    fresh: bool = False


class Message(msgspec.Struct):
    """Where one message stands: the state the passes of
    :meth:`fsm.protocol.MessageProtocol.message` share (one mutable object per call; a
    Struct, so making it is one C call)."""

    key: str
    text: str
    message_id: str | None
    #: What the next pass works on without asking the store: the record this process saw
    #: last (the compare-and-set makes a stale one harmless), a conflict reply's current
    #: record, or what the lock was taken with. None: load it.
    ready: Loaded | None
    pressed: str | None = None
    #: What the user sent besides text (:mod:`fsm.attachments`); None for text.
    attachment: Attachment | None = None
    due: bool = True  # the message is not applied yet (False once saved, or if seen)
    #: This pass decides on a record at hand (the recent one), not on a fresh load: whether
    #: the message was applied already is only known when its save is refused.
    cached: bool = False
    #: ``ready`` came from a load that checked this message's id (a lock-and-load, or the
    #: check a cached decision with files makes), not from this process's memory.
    ready_checked: bool = False
    duplicate: bool = False  # it was applied before; this delivery finishes its action
    owner: str | None = None  # our lease's owner token while we hold it
    leased_at: float = 0.0  # when the lease was taken or last renewed (monotonic)
    locked: bool = False  # the last load said another worker holds the lease
    #: Versions never go back: a session restarted after this call quarantined its record
    #: continues above that record's version (None: nothing quarantined).
    floor: int | None = None
    notices: tuple[Reply, ...] = ()  # said once even if the save is retried
    #: Replies still pending in a poisoned session this call quarantined: carried into the
    #: restarted conversation's outbox, so healing loses no reply.
    carried: tuple[Outgoing, ...] = ()
    #: Outbox entries this process sent under the send lease it holds (``owner``) and has
    #: not confirmed in the store yet: the save drops them (the confirmation folded in).
    sent: set[str] = msgspec.field(default_factory=set)
    #: The send lease the last save kept for the replies it returns (the result's ``lease``).
    lease: str | None = None
    conflicts: int = 0
    actions: int = 0
    version: int = 0
    said: list[Reply] = msgspec.field(default_factory=list)  # replies of this call's saves
    events: list[str] = msgspec.field(default_factory=list)
    stored: Snapshot | None = None  # the last snapshot this call saved
    known: Restored | None = None  # set when we hold the lease and just saved
    #: Input from the user (a message, or a tap on an event's option), not from a timer or
    #: the world outside (:meth:`fsm.Engine.notify`).
    inbound: bool = True
    #: An event to apply instead of text (:meth:`fsm.Engine.notify`).
    event: Event | None = None
    #: The index entry a ticker claimed: fire the due timer it stands for (fsm.firing).
    claim: Due | None = None
    #: The timer this firing consumes (set once the claim is checked against the snapshot).
    firing: Armed | None = None
    #: What becomes of the claim (:class:`fsm.firing.Verdict`), and for LATER, when.
    verdict: Any = None
    later: float = 0.0
    #: The index entry the next save needs first (:meth:`fsm.firing.Firing._with_timers`).
    index: Due | None = None

    def __repr__(self) -> str:
        return f"Message(key={self.key!r}, version={self.version}, due={self.due})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # not the text, the lease, the replies
        return [("key", self.key), ("version", self.version), ("due", self.due)]

    @property
    def mid(self) -> str | None:
        """The message id to check and record, while the message is still to be applied."""
        return self.message_id if self.due else None

    def result(self, snapshot: Snapshot, ignored: str = "") -> Result:
        return Result(
            tuple(self.said), snapshot, self.duplicate, tuple(self.events), self.lease, ignored
        )


class Held(msgspec.Struct):
    """A send lease this process holds for a user, with the entries it sent under it that
    are not confirmed in the store yet (the async engine defers confirmations)."""

    lease: str
    sent: set[str]
    since: float  # when the lease was last set (monotonic)
    done: bool = False  # the transport finished sending: the confirmation frees the lease

    def __repr__(self) -> str:  # not the lease token
        return f"Held(sent={len(self.sent)}, done={self.done})"


class Sending(msgspec.Struct, frozen=True):
    """A user's outbox, taken for sending (:meth:`fsm.AsyncEngine.take_outbox`): the send
    lease to confirm with, the entries still to send, oldest first, and when the user last
    wrote (the stored snapshot's ``last_inbound``: a channel's reply window starts there)."""

    lease: str
    pending: tuple[Outgoing, ...]
    last_inbound: float = 0.0

    def __repr__(self) -> str:
        return f"Sending(pending={len(self.pending)})"
