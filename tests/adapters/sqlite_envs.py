"""The contract suite's entries for SQLiteStore (sync) and its async twin: each opens a fresh,
empty store as a ``StoreEnv`` (see tests/adapters/test_store_contract.py, which passes its
``Adapter`` and ``StoreEnv`` classes in, so this module does not import it)."""

from __future__ import annotations

from typing import Any


def sqlite_adapters(adapter: Any, store_env: Any) -> dict[str, Any]:
    """Name -> ``adapter(tick=..., open=...)``; none yet."""
    return {}
