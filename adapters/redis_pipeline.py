"""Auto-pipelining for :class:`~adapters.redis_async.AsyncRedisStore`: the commands that many
concurrent conversations issue in the same turn of the event loop go to Redis together, as
one pipeline on one connection, as ioredis does by default.

Without it each command takes a connection, is written, and waits for its reply on its own:
at a few hundred conversations the client spends its CPU on per-command work (a connection
out of the pool and back, a write and a read system call, a future) and both a raw client and
the engine top out near 10,000 commands a second on one core. Batched, those costs are paid
once per batch.

How a command travels:

1. :meth:`AutoPipeline.execute` queues it with a future and, if it is the first of this turn,
   schedules a flush with ``loop.call_soon``: every command queued before the loop gets to
   that callback (this turn's) goes in the same batch.
2. The flush sends the batch (at most ``max_batch`` commands; more make several) as a
   non-transactional pipeline, on a task of its own, at most ``max_pipelines`` at once (one
   connection each).
3. Each reply, or each command's own error, goes to its caller's future. A batch that fails
   whole (a connection lost, a timeout) gives every caller that error: each operation retries
   as it would after its own command failed (a save looks for its own write first, see
   :mod:`adapters.redis_ops`).
4. A script the server does not have (``NOSCRIPT``: a restart, a ``SCRIPT FLUSH``, a
   failover) is loaded, and the commands that met it are sent again, once.

Cancellation is safe: a caller cancelled before its batch is sent (queued, or waiting for a
free pipeline) is left out of it; one cancelled while its batch is in flight stops waiting,
and the batch's task still reads every reply, so no connection is left with a reply unread.
A user's commands are in order: an operation issues its next command only once the one
before answered.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from adapters.redis_lua import Lua

__all__ = ["AutoPipeline"]

#: One queued command: its arguments (EVALSHA by a script's SHA, or any command), the script's
#: name when it is one (to load it after a NOSCRIPT), and the caller's future.
_Queued = tuple[tuple[Any, ...], str | None, "asyncio.Future[Any]"]


class AutoPipeline:
    """Batches the commands of one turn of the event loop into pipelines on ``client`` (a
    ``redis.asyncio.Redis``, a Sentinel ``master_for`` client; not a Cluster client)."""

    def __init__(
        self,
        client: Any,
        scripts: Mapping[str, Lua],
        *,
        max_pipelines: int = 16,
        max_batch: int = 512,
    ) -> None:
        if max_pipelines < 1 or max_batch < 1:
            raise ValueError("max_pipelines and max_batch must be >= 1")
        self.client = client
        self._scripts = scripts
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_pipelines)
        self._queued: list[_Queued] = []
        self._flushing = False
        self._sending: set[asyncio.Task[None]] = set()  # kept: a task must not be collected

    async def script(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the store's script ``name`` (EVALSHA) in the next batch; its reply."""
        sha = self._scripts[name].sha
        return await self._queue(("EVALSHA", sha, len(keys), *keys, *args), name)

    async def command(self, *args: Any) -> Any:
        """Run one command in the next batch; its reply."""
        return await self._queue(args, None)

    def _queue(self, args: tuple[Any, ...], script: str | None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((args, script, future))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        queued, self._queued, self._flushing = self._queued, [], False
        live = [item for item in queued if not item[2].done()]  # cancelled: never sent
        for start in range(0, len(live), self._max_batch):
            task = asyncio.get_running_loop().create_task(
                self._send(live[start : start + self._max_batch])
            )
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Queued]) -> None:
        async with self._slots:
            batch = [item for item in batch if not item[2].done()]  # cancelled while waiting
            if not batch:
                return
            try:
                replies = await self._pipeline([args for args, _, _ in batch])
            except BaseException as exc:
                _fail(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            done = [n for n in range(len(batch)) if n not in missing]
            _deliver([batch[n] for n in done], [replies[n] for n in done])
            if not missing:
                return
            # The server lost scripts: load each, and send its commands again.
            again = await self._reload([batch[i] for i in missing])
            try:
                _deliver(again, await self._pipeline([args for args, _, _ in again]))
            except BaseException as exc:
                _fail(again, exc)  # those callers only
                if not isinstance(exc, Exception):
                    raise

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command's reply, or its own error (the batch's error raises)."""
        if len(commands) == 1:  # alone in its turn: no pipeline to build
            try:
                return [await self.client.execute_command(*commands[0])]
            except ResponseError as exc:
                return [exc]
        pipe = self.client.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command(*args)
        return list(await pipe.execute(raise_on_error=False))

    async def _reload(self, missing: list[_Queued]) -> list[_Queued]:
        """Load the scripts ``missing`` ran; the commands whose script loaded (the callers of
        one that did not get its error)."""
        loaded = []
        for name in {script for _, script, _ in missing}:
            callers = [item for item in missing if item[1] == name]
            try:
                if name is not None:
                    await self.client.script_load(self._scripts[name].script)
            except RedisError as exc:
                _fail(callers, exc)  # that script's callers only
            else:
                loaded += callers
        return loaded

    async def aclose(self) -> None:
        """Send what is queued and wait for the batches in flight (their callers get their
        replies)."""
        if self._queued:
            self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


def _deliver(batch: list[_Queued], replies: list[Any]) -> None:
    """Each reply, or each command's own error, to its caller (unless it stopped waiting)."""
    for (_, _, future), reply in zip(batch, replies, strict=True):
        if future.done():
            continue
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)


def _fail(batch: list[_Queued], exc: BaseException) -> None:
    """``exc`` to every caller still waiting, each its own copy (a traceback each)."""
    for _, _, future in batch:
        if not future.done():
            future.set_exception(_copy(exc))


def _copy(exc: BaseException) -> BaseException:
    try:
        twin = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception that will not copy goes as it is
        return exc
    twin.__cause__, twin.__traceback__ = exc.__cause__, None
    return twin
