"""The history entry a save appends: which version it made and what moved."""

from __future__ import annotations

from fsm.records import HistoryEntry
from fsm.snapshot import Snapshot


def history_entry(current: Snapshot, new: Snapshot, event: str) -> HistoryEntry:
    """The history entry of the save that turns ``current`` into ``new``."""
    return HistoryEntry(
        version=new.version,
        from_stage=current.stage,
        to_stage=new.stage,
        event=event,
        update_from=new.update_from,
        at=new.last_updated,
        from_step=current.step,
        to_step=new.step,
    )
