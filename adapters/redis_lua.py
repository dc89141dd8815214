"""Running the stores' Lua scripts: ``EVALSHA`` by the script's SHA-1, and, when the server
does not have it (a ``SCRIPT FLUSH``, a restart, a failover to a replica that never saw it),
``SCRIPT LOAD`` and ``EVALSHA`` once more.

This is what redis-py's ``Script`` objects do, with less work per call: a save runs one
script per message, and ``Script.__call__`` imports and checks for a pipeline, copies its
arguments twice and goes through the deprecation wrappers of ``evalsha`` on every call. A
Cluster client routes ``EVALSHA`` by its keys either way (every key of a call is in one slot).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError


class Lua:
    """One script of a store, run on a sync redis-py client (standalone, Sentinel, Cluster)."""

    __slots__ = ("script", "sha")

    def __init__(self, script: str) -> None:
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sha={self.sha[:12]!r})"

    def run(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.script)
            return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    async def arun(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """:meth:`run` on a ``redis.asyncio`` client."""
        try:
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.script)
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
