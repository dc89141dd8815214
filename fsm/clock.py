"""Time, injectable: session TTLs, lock expiry and token expiry all read a :class:`Clock`.

Production uses :class:`SystemClock`; tests pass a :class:`FakeClock` and move time by hand, so
"the session expired" or "the lock ran out" is a test step, not a sleep.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """What the library asks of a clock: wall time (epoch seconds) and a way to wait."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class FakeClock:
    """A clock that only moves when told to; ``sleep`` advances it instead of blocking.

    >>> clock = FakeClock(1_000.0)
    >>> clock.advance(30)
    >>> clock.now()
    1030.0
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        time.sleep(0)  # let other threads run, as a real sleep would


SYSTEM_CLOCK = SystemClock()
