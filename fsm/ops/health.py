"""``fsm health`` / :func:`health_check`: is the store usable right now, for a container probe.

Every check does the real thing on a reserved key of its own (user keys starting with NUL are
the library's; the engine refuses them as user ids), and cleans up after itself:

- **connection**: one round trip;
- **state**: a compare-and-set write, a read that must return the same bytes, a second write
  with a stale version that must be refused, and a delete;
- **lock**: take the lease, see a second owner refused, read the holder, release it;
- **scripts**: the store's server-side scripts are cached (missing ones are loaded again);
- **latency**: the slowest operation above stays under ``max_latency``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from fsm.errors import FsmError, StoreUnavailable
from fsm.ops.validate import RESERVED_PREFIX
from fsm.records import SaveStatus
from fsm.store import Store, operator_store

T = TypeVar("T")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class HealthReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "checks": [asdict(c) for c in self.checks]}


class _Failed(Exception):
    pass


def health_check(store: Store, *, max_latency: float = 0.5) -> HealthReport:
    """Run every check; the first that cannot reach the store ends the run (the rest are
    reported as not run)."""
    store = operator_store(store)
    report = HealthReport()
    key = f"{RESERVED_PREFIX}health:{secrets.token_hex(4)}"
    slowest = 0.0

    def timed(fn: Callable[[], T]) -> tuple[T, float]:
        nonlocal slowest
        started = time.perf_counter()
        value = fn()
        spent = time.perf_counter() - started
        slowest = max(slowest, spent)
        return value, spent

    def connection() -> str:
        _, spent = timed(lambda: store.lock_info(key))
        return f"round trip {spent * 1000:.1f} ms"

    def state() -> str:
        token = secrets.token_bytes(16)
        saved, _ = timed(lambda: store.save(key, token, version=1, expected_version=0, ttl=60.0))
        if saved.status is not SaveStatus.SAVED:
            raise _Failed(f"write refused: {saved.status.value}")
        loaded, _ = timed(lambda: store.load(key))
        if loaded.record is None or loaded.record.payload != token:
            raise _Failed("read did not return the bytes written")
        stale, _ = timed(lambda: store.save(key, b"stale", version=6, expected_version=5, ttl=60.0))
        if stale.status is not SaveStatus.CONFLICT:
            raise _Failed(f"a stale write was not refused: {stale.status.value}")
        deleted, _ = timed(lambda: store.delete(key))
        if not deleted or store.load(key).record is not None:
            raise _Failed("delete did not remove the session")
        return "write, read, stale write refused, delete"

    def lock() -> str:
        owner, other = secrets.token_hex(8), secrets.token_hex(8)
        took, _ = timed(lambda: store.acquire_lock(key, owner, 10.0))
        if not took:
            raise _Failed("could not take a free lock")
        try:
            if store.acquire_lock(key, other, 10.0):
                raise _Failed("a second owner took a held lock")
            info = store.lock_info(key)
            if info is None or info.owner != owner:
                raise _Failed("the lock does not name its holder")
        finally:
            released, _ = timed(lambda: store.release_lock(key, owner))
        if not released or store.lock_info(key) is not None:
            raise _Failed("release did not free the lock")
        return "acquire, exclusion, holder, release"

    def scripts() -> str:
        status, _ = timed(store.script_cache)
        if status is None:
            return "no server-side scripts"
        cached, total = status
        if cached < total:
            return f"{cached}/{total} cached; the missing ones were loaded again"
        return f"{total}/{total} cached"

    for name, run in (
        ("connection", connection),
        ("state", state),
        ("lock", lock),
        ("scripts", scripts),
    ):
        started = time.perf_counter()
        try:
            detail = run()
            report.checks.append(Check(name, True, detail, time.perf_counter() - started))
        except _Failed as exc:
            report.checks.append(Check(name, False, str(exc), time.perf_counter() - started))
        except StoreUnavailable as exc:  # the store cannot be reached: nothing else can run
            detail = f"store unavailable during {exc.operation}: {exc.detail}"
            report.checks.append(Check(name, False, detail, time.perf_counter() - started))
            break
        except FsmError as exc:
            report.checks.append(Check(name, False, str(exc), time.perf_counter() - started))
    else:
        ok = slowest <= max_latency
        report.checks.append(
            Check(
                "latency",
                ok,
                f"slowest operation {slowest * 1000:.1f} ms (limit {max_latency * 1000:.0f} ms)",
                slowest,
            )
        )
    return report
