"""The user's lease: taken before a step with side effects runs, renewed, given back.

A lease is a lock with an owner token and an expiry, taken together with a load (the state may
have moved while we waited), waited for with jittered backoff up to ``lock_wait`` in real time
(the holder needs real time to finish, even on a fake clock), renewed before an action when it
has aged, and freed only by its owner. It is for efficiency: the compare-and-set on the
version, not the lease, decides whose state lands.
"""

from __future__ import annotations

import time

from fsm.effects import Sleep, StoreCall
from fsm.engine_core import EngineCore, S, Steps, log
from fsm.errors import FsmError, LockTimeout
from fsm.inflight import Message
from fsm.records import Loaded
from fsm.redaction import user_tail
from fsm.store import lock_backoff, new_owner_token


class Leasing(EngineCore[S]):
    """The protocol's lease steps (see the module's doc)."""

    def _lock(self, m: Message) -> Steps[None]:
        """Take the user's lease (waiting up to ``lock_wait``, jittered backoff) and load under
        it: the next pass works on what the lock was taken with."""
        self.stats.incr("lock_acquisitions")
        owner = new_owner_token()
        call = StoreCall("lock_and_load", (m.key, owner, self.lock_ttl), {"message_id": m.mid})
        started = time.perf_counter()
        # Waiting is real time even on a fake clock: the holder needs real time to finish.
        deadline = time.monotonic() + self.lock_wait
        delays = lock_backoff()
        try:
            while (loaded := (yield from self._lock_attempt(m, owner, call))) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats.incr("lock_timeouts")
                    raise LockTimeout(m.key, waited=self.lock_wait)
                yield Sleep(min(next(delays), left))
        finally:
            self.stats.observe("lock", time.perf_counter() - started)
        m.owner, m.ready, m.leased_at = owner, loaded, time.monotonic()
        m.ready_checked = True  # the lock-and-load checked the message id

    def _lock_attempt(self, m: Message, owner: str, call: StoreCall) -> Steps[Loaded | None]:
        since = self._recent.tick()
        try:
            loaded: Loaded | None = yield call
        except Exception:
            raise  # the store already freed a lock whose outcome it could not tell
        except BaseException:
            # Cancelled mid-call: the lock may be ours now. The way out frees it (only if it is
            # ours), rather than leaving the user locked out until its TTL.
            m.owner = owner
            raise
        if loaded is not None:
            self._remember(m.key, loaded.record, since)
        return loaded

    def _release(self, key: str, owner: str) -> Steps[None]:
        """Free our lease on the way out. A store error here must not replace the result or
        the error being returned: it is logged, and the lease expires on its own."""
        try:
            yield StoreCall("release_lock", (key, owner), {})
        except FsmError as exc:
            log.warning(
                "user %s: could not release the lease (%s); it expires by itself",
                user_tail(key),
                exc,
            )

    def _lease_aging(self, leased_at: float) -> bool:
        """Whether a lease taken (or renewed) at ``leased_at`` is old enough to renew before
        another action runs under it. A fresh one is not: that saves a round trip."""
        return time.monotonic() - leased_at > self.lock_ttl / 3

    def _lease_held(self, key: str, owner: str) -> Steps[bool]:
        """Renew our lease. False if it lapsed meanwhile: another worker may have taken the
        lock, so the caller must stop relying on it (the compare-and-set still decides whose
        state lands); the overlap is reported."""
        if (yield StoreCall("extend_lock", (key, owner, self.lock_ttl), {})):
            return True
        self._lease_lost(key)
        return False

    def _lease_lost(self, key: str) -> None:
        self.stats.incr("lease_lost")
        log.warning(
            "user %s: the lease expired during a step (lock_ttl=%ss)", user_tail(key), self.lock_ttl
        )
