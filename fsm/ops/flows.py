"""Which flows the sessions in a store belong to, read from the sessions themselves.

The operator's commands judge sessions against a flow. Judged against the wrong one, every
session looks broken and a repair would rewrite them all as the wrong bot's: so when no flow is
named, the commands read the flow names the stored sessions carry (:func:`flows_in`), and
refuse to guess when those do not settle it.
"""

from __future__ import annotations

from collections import Counter
from itertools import islice

from fsm.errors import FsmError
from fsm.ops.validate import is_reserved
from fsm.snapshot import decode_snapshot
from fsm.store import Store

#: How many sessions :func:`flows_in` reads by default: enough to see a second flow that is
#: not rare, few enough to answer at once on a store of millions.
SAMPLE = 200


def flows_in(store: Store, *, sample: int = SAMPLE) -> tuple[Counter[str], int]:
    """How many of the first ``sample`` sessions (in scan order) belong to each flow name,
    and how many sessions were read. Sessions that do not decode (written by newer code, or
    broken) are counted as read, under no flow."""
    found: Counter[str] = Counter()
    read = 0
    views = (v for v in store.sessions(batch=min(sample, 500)) if not is_reserved(v.user_key))
    for view in islice(views, sample):
        read += 1
        try:
            snapshot = decode_snapshot(view.record.payload, user_key=view.user_key)
        except (FsmError, ValueError):
            continue
        found[snapshot.flow] += 1
    return found, read
