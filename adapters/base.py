"""Deprecated home of the Store contract: it lives in the core now (:mod:`fsm.store`, and the
records it speaks in :mod:`fsm.records`). This module re-exports those names for one release
(0.3.x) so code written against 0.2 keeps working; import from ``fsm.store`` / ``fsm.records``
(or ``adapters``, which re-exports them too) instead.
"""

from __future__ import annotations

import warnings

from fsm.records import (
    MAX_VERSION,
    HistoryEntry,
    Loaded,
    LockInfo,
    QuarantineEntry,
    Record,
    SaveResult,
    SaveStatus,
    SessionView,
    decode_history,
    encode_history,
)
from fsm.store import (
    AsyncSessionStore,
    AsyncStore,
    OperatorStore,
    SessionStore,
    Store,
    check_save_arguments,
    lock_backoff,
    new_owner_token,
)

__all__ = [
    "MAX_VERSION",
    "AsyncSessionStore",
    "AsyncStore",
    "HistoryEntry",
    "Loaded",
    "LockInfo",
    "OperatorStore",
    "QuarantineEntry",
    "Record",
    "SaveResult",
    "SaveStatus",
    "SessionStore",
    "SessionView",
    "Store",
    "check_save_arguments",
    "decode_history",
    "encode_history",
    "lock_backoff",
    "new_owner_token",
]

warnings.warn(
    "adapters.base is deprecated: import the store contract from fsm.store and its records "
    "from fsm.records (or from adapters); adapters.base goes in release 0.4",
    DeprecationWarning,
    stacklevel=2,
)
