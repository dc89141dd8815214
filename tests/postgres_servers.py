"""A real PostgreSQL server for the tests, started on first use and shared by the session.

The server runs from the ``initdb`` and ``postgres`` binaries on a free loopback port, in its
own temp directory, and is stopped by its PID
(:class:`adapters.postgres_server.PostgresServer`). Nothing here talks to a PostgreSQL the tests
did not start: never the shared one on 5432. Each test works in a schema of its own
(:func:`fresh_schema`), so one server serves every test; the fault tests that restart a server
start one of their own (:func:`private`).

Without the binaries, tests that need a server are skipped, saying how to get them.
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading

import pytest

from adapters.postgres_server import PostgresServer, PostgresServerMissing, postgres_binaries

__all__ = ["PostgresServer", "fresh_schema", "private", "standalone", "stop_all"]

_started: dict[str, PostgresServer] = {}
_mutex = threading.Lock()
_schemas = itertools.count(1)


def _binaries_or_skip() -> None:
    try:
        postgres_binaries()
    except PostgresServerMissing as exc:
        pytest.skip(f"no PostgreSQL server to run: {exc}")


def standalone() -> PostgresServer:
    """The session's server (started on first use); skips the test without the binaries."""
    _binaries_or_skip()
    with _mutex:
        if "standalone" not in _started:
            _started["standalone"] = PostgresServer(name="postgres").start()
        return _started["standalone"]


def private(name: str = "postgres-private") -> PostgresServer:
    """A server of the caller's own (stop it when done: the fault tests crash and restart
    theirs); skips the test without the binaries."""
    _binaries_or_skip()
    return PostgresServer(name=name).start()


def fresh_schema(prefix: str = "t") -> str:
    """A schema name no other test of this run uses."""
    return f"{prefix}_{os.getpid()}_{next(_schemas)}"


def stop_all() -> None:
    with _mutex:
        for server in _started.values():
            server.stop()
        _started.clear()


atexit.register(stop_all)
