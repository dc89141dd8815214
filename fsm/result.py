"""What handling one message returns: the replies to send and the snapshot now stored."""

from __future__ import annotations

import msgspec

from fsm.reply import Reply
from fsm.snapshot import Outgoing, Snapshot


class Result(msgspec.Struct, frozen=True):
    """What ``handle`` returns: replies to send and the snapshot now stored.

    ``duplicate`` is true when the message id had already been applied; ``snapshot`` is then
    what is stored (or, if the session has since expired or is unreadable, a fresh one at the
    initial stage with version 0). A duplicate usually has no replies, but not always: if the
    worker that applied it died before its action ran, this delivery ran the action and
    returns its replies. Send ``replies`` whenever there are any, duplicate or not.
    """

    replies: tuple[Reply, ...]
    snapshot: Snapshot
    duplicate: bool = False
    events: tuple[str, ...] = ()
    #: With a send lease (``send_lease=``, :mod:`fsm.outbox`): the lease token this call
    #: kept for sending :attr:`outbox`, held until :meth:`~fsm.Engine.confirm` (or
    #: :meth:`fsm.AsyncEngine.sent`) frees it. None when the outbox is empty, or when another
    #: worker holds the lease (take it with ``take_outbox``, which waits for it).
    lease: str | None = None
    #: For an event (:meth:`fsm.Engine.notify`) or a timer that did not apply: why not (no
    #: handler in the conversation's stage, no conversation, nothing due). "" when applied.
    ignored: str = ""

    @property
    def to_send(self) -> bool:
        """Whether a transport has something to do with it: replies, or a send lease kept for
        replies pending in the outbox."""
        return bool(self.replies) or self.lease is not None

    @property
    def texts(self) -> list[str]:
        return [reply.render() for reply in self.replies]

    @property
    def outbox(self) -> tuple[Outgoing, ...]:
        """With ``outbox=True``: every reply saved and not yet confirmed sent, oldest first
        (this message's, and any an earlier delivery could not send). Send these, not
        ``replies``, then :meth:`~fsm.Engine.confirm` the ones the channel accepted (by their
        :attr:`~fsm.snapshot.Outgoing.key`)."""
        return self.snapshot.outbox
