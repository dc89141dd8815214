"""Small helpers shared by the test packages."""

from __future__ import annotations

from adapters import Store


def stored_bytes(store: Store, user: str) -> bytes | None:
    """The session bytes exactly as the store holds them (None if there is no session)."""
    record = store.load(user).record
    return None if record is None else record.payload
