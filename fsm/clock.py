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


#: Where a :class:`FakeClock` starts unless told otherwise: 2023-11-14 22:13:20 UTC, fixed so
#: that a test's timestamps are the same on every run.
FAKE_EPOCH = 1_700_000_000.0


class FakeClock:
    """A clock that only moves when told to; ``sleep`` advances it instead of blocking.

    It starts at :data:`FAKE_EPOCH` (2023-11-14 22:13:20 UTC) unless given ``start``. It expires
    what reads it: the in-memory stores' sessions, leases and message ids, and tokens checked
    by a :class:`~fsm.auth.TokenVerifier` on the same clock. It cannot expire anything kept by
    Redis, whose TTLs run on the server's own clock.

    >>> clock = FakeClock(1_000.0)
    >>> clock.advance(30)
    >>> clock.now()
    1030.0
    """

    def __init__(self, start: float = FAKE_EPOCH) -> None:
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
