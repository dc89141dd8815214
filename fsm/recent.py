"""The records this process saw last, per user: what lets a warm message skip its read.

The engine works on the record it saved (or loaded) last for a user and goes straight to the
compare-and-set. If another worker wrote meanwhile, the compare-and-set refuses and its reply
carries the current record, so a stale entry costs one retry, never a wrong write. Bounded (least
recently used first out) and thread-safe; entries are bytes the store already holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from adapters.base import Loaded, Record


class RecentRecords:
    """A bounded LRU of ``user key -> Record``. ``size=0`` turns it off."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = size
        self._records: OrderedDict[str, Record] = OrderedDict()
        self._mutex = threading.Lock()

    def get(self, key: str) -> Loaded | None:
        """The last record seen, as a load would return it (nothing about message ids or the
        lock: the compare-and-set checks those), or None."""
        with self._mutex:
            record = self._records.get(key)
            if record is None:
                return None
            self._records.move_to_end(key)
        return Loaded(record)

    def put(self, key: str, record: Record | None) -> None:
        """Remember ``record`` (None: the session is gone, forget it)."""
        if record is None:
            self.forget(key)
            return
        if not self.size:
            return
        with self._mutex:
            self._records[key] = record
            self._records.move_to_end(key)
            while len(self._records) > self.size:
                self._records.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._mutex:
            self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)
