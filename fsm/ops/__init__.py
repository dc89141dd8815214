"""The operator's toolkit: what used to be ``redis-cli --scan``, TTL loops in shell and ad-hoc
Python, as library calls that work on every store. The ``fsm`` commands (:mod:`fsm.cli`) are
thin wrappers around these.

- :mod:`fsm.ops.sessions`: one session in full, or all of them filtered (``inspect``, ``ls``)
- :mod:`fsm.ops.validate`: is a session valid for its flow, and why not (``check``)
- :mod:`fsm.ops.recover`: repair a broken session; restore quarantined bytes (``recover``)
- :mod:`fsm.ops.migrate`: rewrite sessions of older schemas and flow versions (``migrate``)
- :mod:`fsm.ops.backup`: every session to a file and back (``backup``, ``restore``)
- :mod:`fsm.ops.metrics`: store-wide figures (``metrics``); :mod:`fsm.ops.prometheus` exports
  them and the engine's in-process counters
- :mod:`fsm.ops.health`: a real write/read/lock round trip for probes (``health``)

Nothing here touches the network itself: every read and write goes through the
:class:`~fsm.store.Store` it is given.
"""

from fsm.ops.backup import backup, restore
from fsm.ops.health import health_check
from fsm.ops.metrics import collect_metrics
from fsm.ops.migrate import migrate_sessions
from fsm.ops.recover import recover_session, restore_quarantined
from fsm.ops.sessions import inspect_session, list_sessions
from fsm.ops.validate import Diagnosis, Problem, check_store, diagnose

__all__ = [
    "Diagnosis",
    "Problem",
    "backup",
    "check_store",
    "collect_metrics",
    "diagnose",
    "health_check",
    "inspect_session",
    "list_sessions",
    "migrate_sessions",
    "recover_session",
    "restore",
    "restore_quarantined",
]
