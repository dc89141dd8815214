"""Reading the armed timers as an operator (``fsm timers ls``): the store's index of deadlines
joined with the snapshots that hold the timers. Only :func:`index_timers` writes: what a
tool that puts a snapshot back (``fsm restore``, ``fsm quarantine restore``) calls first.

The index holds one entry per arming (:mod:`fsm.firing`); the timers themselves are in the
snapshot, under its ``armed``. An entry whose ``armed`` is not the snapshot's stands for nothing
(its save lost, or the timers were cancelled since): it is listed as ``stale``, and is dropped
without firing when it comes due. Entries a ticker has claimed (firing now) are not listed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fsm.errors import FsmError
from fsm.records import Due
from fsm.snapshot import Snapshot, decode_snapshot
from fsm.store import Store


def index_timers(store: Store, user_key: str, snapshot: Snapshot | None, now: float) -> None:
    """Index ``snapshot``'s timers before the save that puts it back (the index of deadlines
    is in no backup or quarantine), due now at the earliest: an entry is never indexed in the
    past, so a ticker that claims it before the save lands looks at it again rather than
    giving it up."""
    if snapshot is not None and snapshot.timers and snapshot.armed and store.keeps_timers:
        store.index_due(user_key, snapshot.armed, max(snapshot.timers[0].due, now))


@dataclass(frozen=True, slots=True)
class ArmedTimer:
    """One row of ``fsm timers ls``: a timer armed in a conversation, or an index entry that
    stands for none (``state`` ``stale``: no snapshot holds it; ``unreadable``: the snapshot
    does not decode)."""

    user_key: str
    due: float
    state: str = "armed"
    stage: str = ""
    step: str = ""
    timer: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "user": self.user_key,
            "stage": self.stage or None,
            "step": self.step or None,
            "timer": self.timer or None,
            "due": self.due,
            "state": self.state,
        }


def armed_timers(store: Store, *, user_key: str | None = None) -> Iterator[ArmedTimer]:
    """Every timer the index of deadlines stands for, soonest entry first (``user_key``'s
    only, if given); one load per user listed."""
    seen: dict[str, Snapshot | str | None] = {}
    for entry in store.indexed_due(user_key=user_key):
        if entry.user_key not in seen:
            seen[entry.user_key] = _snapshot(store, entry.user_key)
        yield from _rows(entry, seen[entry.user_key])


def _snapshot(store: Store, user_key: str) -> Snapshot | str | None:
    """The stored snapshot, None if there is none, or "unreadable"."""
    record = store.load(user_key).record
    if record is None:
        return None
    try:
        return decode_snapshot(record.payload, user_key=user_key)
    except FsmError:
        return "unreadable"


def _rows(entry: Due, snapshot: Snapshot | str | None) -> Iterator[ArmedTimer]:
    if isinstance(snapshot, str):
        yield ArmedTimer(entry.user_key, entry.due, snapshot)
    elif snapshot is None or snapshot.armed != entry.armed or not snapshot.timers:
        yield ArmedTimer(entry.user_key, entry.due, "stale")
    else:
        for timer in snapshot.timers:
            yield ArmedTimer(
                entry.user_key, timer.due, "armed", snapshot.stage, snapshot.step, timer.name
            )


def reindex_timers(
    store: Store, *, now: float, progress: Callable[[str], None] | None = None
) -> int:
    """Index again every stored snapshot's timers (``fsm timers reindex``): after a failover
    that lost index entries, whose timers would otherwise not fire until the conversation
    arms new ones. Safe while tickers run: an entry already indexed is only written again, and
    a firing is always checked against the snapshot. Returns how many were indexed."""
    indexed = 0
    for view in store.sessions():
        if progress is not None:
            progress(view.user_key)
        try:
            snapshot = decode_snapshot(view.record.payload, user_key=view.user_key)
        except FsmError:
            continue  # unreadable: the engine quarantines it at the next message
        if snapshot.timers and snapshot.armed:
            index_timers(store, view.user_key, snapshot, now)
            indexed += 1
    return indexed
