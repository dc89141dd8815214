"""Small helpers shared by the test packages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from adapters import MemoryStore, Store
from adapters.base import SaveResult
from fsm.errors import StoreUnavailable


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
