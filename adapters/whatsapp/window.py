"""WhatsApp's customer service window: free-form messages only within 24 hours of the user's
last message; outside it, only an approved message template (:func:`fsm.template`).

The transport decides before it sends, by the engine's clock and the snapshot's
``last_inbound`` (when the user last wrote): inside the window a reply goes out in its
free-form form; outside it, as its template. A reply without a template is not attempted
outside the window: by default it is *dropped* (confirmed unsent, logged and counted), or,
with ``keep``, left in the outbox until the user writes again, then sent before the replies to
that message.

``last_inbound`` 0 means the stored conversation does not know: it was begun by an event
(``starts=True``), after the user's earlier conversation expired, or stored before the field
existed. The window is then not judged closed: the free-form form is tried, and if the Graph
API refuses it for the window (131047) the reply is sent once more as its template.
"""

from __future__ import annotations

from typing import Literal, get_args

#: Seconds after the user's last message in which WhatsApp takes free-form messages.
WINDOW = 24 * 60 * 60.0

#: What becomes of a reply without a template when the window is closed.
ClosedWindow = Literal["drop", "keep"]
CLOSED_WINDOW: tuple[ClosedWindow, ...] = get_args(ClosedWindow)


def window_closed(last_inbound: float, now: float, window: float = WINDOW) -> bool:
    """Whether the window of a user who last wrote at ``last_inbound`` (epoch seconds; 0:
    not known) is known to be closed at ``now``.

    >>> window_closed(1_000.0, 1_000.0 + 23 * 3600), window_closed(1_000.0, 1_000.0 + WINDOW)
    (False, True)
    >>> window_closed(0.0, 1_000.0)  # not known: tried, the Graph API's answer decides
    False
    """
    return last_inbound > 0 and now - last_inbound >= window
