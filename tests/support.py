"""Small helpers shared by the test packages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from adapters import MemoryStore, Store
from fsm.errors import StoreUnavailable
from fsm.records import HistoryEntry, Loaded, SaveResult
from fsm.store import SessionStore


def stored_bytes(store: Store, user: str) -> bytes | None:
    """The session bytes exactly as the store holds them (None if there is no session)."""
    record = store.load(user).record
    return None if record is None else record.payload


class FailingSaves(MemoryStore):
    """A memory store whose saves fail as a lost connection would, while ``failing`` > 0
    (each failed save counts one down; a negative value fails every save)."""

    failing = 0

    def save(self, user_key: str, payload: bytes, **kw: Any) -> SaveResult:
        if self.failing:
            self.failing -= 1 if self.failing > 0 else 0
            raise StoreUnavailable("save", user_key=user_key, detail="connection reset")
        return super().save(user_key, payload, **kw)


def wait_http(
    url: str,
    process: Any,
    *,
    timeout: float = 30.0,
    log: Path | None = None,
    interval: float = 0.05,
) -> None:
    """Wait until ``url`` answers 200, while ``process`` (a ``subprocess.Popen``) runs; a
    RuntimeError, with ``log``'s text, if it exits first or ``timeout`` seconds pass."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            told = f":\n{log.read_text()}" if log is not None and log.exists() else ""
            raise RuntimeError(f"{url} did not come up{told}")
        time.sleep(interval)


def check_rows(stdout: str) -> list[dict[str, Any]]:
    """The per-session rows of ``fsm check --json`` (JSON Lines), checking that its last line
    is the summary it always prints and that the summary counts the rows."""
    import json

    *rows, last = [json.loads(line) for line in stdout.splitlines()]
    assert set(last) == {"summary"}, last
    assert last["summary"]["invalid"] == len(rows)
    return rows


class EnginePortOnly(SessionStore):
    """A store that offers the engine's port and nothing else (:class:`fsm.store.SessionStore`,
    seven methods), over ``inner``'s data: the engine must need no more than that."""

    def __init__(self, inner: SessionStore) -> None:
        self.inner = inner
        self.takes_lease_on_save = inner.takes_lease_on_save

    def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        return self.inner.load(user_key, message_id=message_id)

    def save(self, user_key: str, payload: bytes, **options: Any) -> SaveResult:  # type: ignore[override]
        return self.inner.save(user_key, payload, **options)

    def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        return self.inner.history(user_key, limit=limit)

    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        return self.inner.lock_and_load(user_key, owner, ttl, message_id=message_id)

    def release_lock(self, user_key: str, owner: str) -> bool:
        return self.inner.release_lock(user_key, owner)

    def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return self.inner.extend_lock(user_key, owner, ttl)

    def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        return self.inner.quarantine(user_key, raw, reason)
