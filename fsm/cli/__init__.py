"""The ``fsm`` command line: run a bot in the terminal, and operate the store it keeps.

Each group of commands lives in its own module: :mod:`fsm.cli.chat` (``fsm chat``),
:mod:`fsm.cli.graph` (``fsm graph``), :mod:`fsm.cli.serve` (``fsm serve``) with
:mod:`fsm.cli.webhook` (``fsm fake-graph``, ``fsm sign-webhook``), and the operator's
commands, which work on any store (``--store URL`` or ``FSM_STORE``): :mod:`fsm.cli.sessions`
(``inspect``, ``history``, ``ls``), :mod:`fsm.cli.timers` (``timers ls``, ``timers run``,
``notify``),
:mod:`fsm.cli.repair` (``check``, ``recover``, ``quarantine``), :mod:`fsm.cli.migrate`,
:mod:`fsm.cli.db` (``db migrate``, a SQL store's schema),
:mod:`fsm.cli.backup` (``backup``, ``restore``), :mod:`fsm.cli.monitor` (``metrics``,
``health``) and :mod:`fsm.cli.monitoring` (alerting rules and a dashboard). No command prints
a token unless asked to with ``--show-secrets``.

Exit codes: 0 success; 1 the command ran and found a problem (an unknown user, invalid sessions,
an unhealthy store, a failed transcript expectation); 2 bad usage or an unreachable store.

A process that embeds its store (a :class:`~adapters.MemoryStore`) can run the commands on it
in-process: ``main(args, obj={"store": store})``.
"""

from __future__ import annotations

import sys

from fsm.cli.common import main

# Importing the modules registers their commands on ``main``.
from fsm.cli import backup as _backup  # noqa: F401  isort: skip
from fsm.cli import chat as _chat  # noqa: F401  isort: skip
from fsm.cli import db as _db  # noqa: F401  isort: skip
from fsm.cli import graph as _graph  # noqa: F401  isort: skip
from fsm.cli import migrate as _migrate  # noqa: F401  isort: skip
from fsm.cli import monitor as _monitor  # noqa: F401  isort: skip
from fsm.cli import monitoring as _monitoring  # noqa: F401  isort: skip
from fsm.cli import repair as _repair  # noqa: F401  isort: skip
from fsm.cli import serve as _serve  # noqa: F401  isort: skip
from fsm.cli import sessions as _sessions  # noqa: F401  isort: skip
from fsm.cli import timers as _timers  # noqa: F401  isort: skip
from fsm.cli import webhook as _webhook  # noqa: F401  isort: skip
from fsm.cli import whatsapp as _whatsapp  # noqa: F401  isort: skip

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
