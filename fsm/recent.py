"""The records this process saw last, per user: what lets a warm message skip its read.

The engine works on the record it saved (or loaded) last for a user and goes straight to the
compare-and-set. If another worker wrote meanwhile, the compare-and-set refuses and its reply
carries the current record, so a stale entry costs one retry, never a wrong write. Bounded (least
recently used first out) and thread-safe; entries are bytes the store already holds.

Concurrent messages of one process (threads, or tasks on one event loop) race to put what they
read. A reply is only as new as the moment its request went out, so each put says when that was
(:meth:`RecentRecords.tick` read before the request): an entry put after that moment is newer
knowledge and is kept, and only an entry known before can show that a version went backwards.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from fsm.records import Loaded, Record
from fsm.snapshot import Snapshot


class RecentRecords:
    """A bounded LRU of ``user key -> Record``. ``size=0`` turns it off."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = size
        self._records: OrderedDict[str, tuple[Record, int, Snapshot | None, Any]] = OrderedDict()
        self._mutex = threading.Lock()
        self._ticks = 0

    def tick(self) -> int:
        """Now, in puts: read it before a request whose reply will be :meth:`put`."""
        return self._ticks

    def get(self, key: str) -> Loaded | None:
        """The last record seen, as a load would return it (nothing about message ids or the
        lock: the compare-and-set checks those), or None."""
        entry = self._records.get(key)  # no lock: a dict read is atomic
        if entry is None:
            return None
        try:  # noqa: SIM105 - contextlib.suppress costs more than the lookup it guards
            self._records.move_to_end(key)
        except KeyError:  # recency is a hint: a racing put evicted it meanwhile
            pass
        return Loaded(entry[0])

    def snapshot(self, key: str, record: Record) -> Snapshot | None:
        """The snapshot kept with ``record`` (this very object) when it was put: what the
        engine made of those bytes, so a warm message need not decode and check them again."""
        entry = self._records.get(key)
        return entry[2] if entry is not None and entry[0] is record else None

    def claims(self, key: str, record: Record) -> Any:
        """The verified claims of the token the snapshot kept with ``record`` holds, when the
        engine had them (:class:`fsm.auth.Claims`), else None."""
        entry = self._records.get(key)
        return entry[3] if entry is not None and entry[0] is record else None

    def put(
        self,
        key: str,
        record: Record | None,
        since: int | None = None,
        snapshot: Snapshot | None = None,
        claims: Any = None,
    ) -> Record | None:
        """Remember ``record``, read by a request sent at tick ``since`` (None: now; a None
        record: the session is gone), with the valid ``snapshot`` it holds, and the verified
        ``claims`` of that snapshot's token, when the caller has them. An entry put after
        ``since`` is newer and stays.

        Returns the entry this replaced if it was known before ``since``: the record the
        caller's reply can be compared with (a lower version then means one went back)."""
        with self._mutex:
            entry = self._records.get(key)
            if entry is not None and since is not None and entry[1] > since:
                return None  # a reply that left later was put already: it is the newer one
            self._ticks += 1
            if record is None:
                self._records.pop(key, None)
            elif self.size:
                self._records[key] = (record, self._ticks, snapshot, claims)
                self._records.move_to_end(key)
                while len(self._records) > self.size:
                    self._records.popitem(last=False)
        return None if entry is None else entry[0]

    def forget(self, key: str) -> None:
        with self._mutex:
            self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)
