"""In-process counters of the message path (what happened, how often), cheap and thread-safe.

They cost no store round trip; read them from ``engine.stats`` (tests do).
"""

from __future__ import annotations

import threading
from collections import Counter


class EngineStats:
    """Named counters: ``applied``, ``conflicts``, ``duplicates``, ``corrupt``, ``expired``,
    ``token_refused``, ``lock_acquisitions``, ``lock_timeouts``, ``lease_lost``,
    ``step_failures``, ``transitions:<from>-><to>``."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def incr(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        return f"EngineStats({self.as_dict()!r})"
