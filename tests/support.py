"""Small helpers shared by the test packages."""

from __future__ import annotations

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
