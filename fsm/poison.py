"""Poisoned sessions: stored data on which a step can only fail, told apart from bad luck.

A message whose step fails is refused and the stored session left as it was. When distinct
messages keep failing on the same stored version, the data itself is the likely cause (a
value the step cannot handle); :class:`FailureCount` counts them per user, per process, so the
protocol can quarantine such a session at the flow's ``poison_after`` and restart the user,
rather than fail every message they send. A re-delivery of the message that failed last is
one failure, not two.
"""

from __future__ import annotations

from collections import OrderedDict

#: How many users' failure counts a process keeps (least recently failed out first).
FAILURES_KEPT = 10_000


class FailureCount:
    """Per user key: the stored version that failed, how many messages failed in a row on
    it, and the last one's id. Bounded to ``kept`` users."""

    def __init__(self, kept: int = FAILURES_KEPT) -> None:
        self.kept = kept
        self._counts: OrderedDict[str, tuple[int, int, str | None]] = OrderedDict()

    def add(self, key: str, version: int, message_id: str | None, limit: int) -> int:
        """Count a failed message on stored ``version``; returns the failures in a row on
        it. At ``limit`` the count is dropped (the caller quarantines the session)."""
        last_version, failures, last = self._counts.pop(key, (version, 0, None))
        if last_version != version:
            failures, last = 0, None
        if message_id is None or message_id != last:
            failures += 1
        if failures < limit:
            self._counts[key] = (version, failures, message_id)
            while len(self._counts) > self.kept:
                self._counts.popitem(last=False)
        return failures
