"""AsyncEngine: the same message protocol as :class:`fsm.Engine`, driven on asyncio.

>>> from adapters import AsyncMemoryStore
>>> engine = AsyncEngine(my_flow, AsyncMemoryStore())          # doctest: +SKIP
>>> result = await engine.handle("263770000001", "hi")          # doctest: +SKIP

The algorithm is :mod:`fsm.protocol`'s, unchanged; this driver performs its effects with an
:class:`~fsm.store.AsyncSessionStore`. Step handlers follow the Starlette/FastAPI rule: an
``async def`` handler is awaited on the loop; a plain ``def`` handler runs in a worker thread
(blocking I/O in it never stalls other conversations) unless it is marked
``blocking=False``, which runs it on the loop.

Cancellation (a client that went away, ``asyncio.timeout``) is safe at every await: the
cancellation is thrown into the protocol where it waited, the protocol frees a lease it holds,
and the cancellation goes on. Each save is one atomic compare-and-set, so the stored snapshot
is the old one or the new one; a re-delivery of the message is applied once (its id is
recorded by the same write). A plain ``def`` handler running in a thread cannot be stopped:
the cancellation waits for it to return, so no lease is freed under a running step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from fsm.effects import HandlerCall, Sleep, Steps, StoreCall
from fsm.protocol import MessageProtocol, Result
from fsm.snapshot import Snapshot
from fsm.step import Context
from fsm.store import AsyncSessionStore

if TYPE_CHECKING:
    from fsm.flow import Flow

__all__ = ["AsyncEngine"]

T = TypeVar("T")


class AsyncEngine(MessageProtocol[AsyncSessionStore]):
    """Runs a flow against an async store; the options, ``stats``, ``Result`` and errors are
    those of :class:`fsm.Engine`."""

    calls_in_place = frozenset({"inline"})  # a handler that never blocks runs on the loop

    def __init__(self, flow: Flow, store: AsyncSessionStore, **options: Any) -> None:
        if not isinstance(store, AsyncSessionStore):
            raise TypeError(
                f"AsyncEngine needs an async store (fsm.store.AsyncSessionStore: "
                f"AsyncMemoryStore, AsyncRedisStore), got {type(store).__name__}: "
                "use fsm.Engine with a sync store"
            )
        super().__init__(flow, store, **options)

    async def handle(
        self,
        user_id: str,
        text: str,
        *,
        message_id: str | None = None,
        pressed: str | None = None,
    ) -> Result:
        """Apply one user message and return the replies, after the new state is saved
        (as :meth:`fsm.Engine.handle`)."""
        return await self._drive(self.message(user_id, text, message_id, pressed))

    async def confirm(self, user_id: str, sent: Iterable[tuple[int, int]]) -> bool:
        """Drop confirmed outbox entries (as :meth:`fsm.Engine.confirm`)."""
        return await self._drive(self.confirm_steps(user_id, sent))

    async def peek(self, user_id: str) -> Snapshot | None:
        """The stored snapshot, decoded, without changing anything (None if absent)."""
        return await self._drive(self.peek_steps(user_id))

    async def _drive(self, protocol: Steps[T]) -> T:
        """Run ``protocol`` to its end, awaiting each effect it yields. Any exception, a
        cancellation included, is thrown into the protocol where the effect was asked for."""
        store = self.store
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = protocol.send(value) if error is None else protocol.throw(error)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                value = error = None
                try:
                    if type(effect) is StoreCall:
                        value = await getattr(store, effect.method)(*effect.args, **effect.kwargs)
                    elif type(effect) is HandlerCall:
                        value = await _call(effect)
                    elif type(effect) is Sleep:
                        await asyncio.sleep(effect.seconds)
                    else:
                        raise TypeError(f"not an effect: {effect!r}")
                except BaseException as exc:  # noqa: BLE001 - handed to the protocol
                    error = exc
        finally:
            # No cycle through this frame: an error's traceback must not keep the handler's
            # frames (and the payload, the token) alive until the cyclic collector runs.
            value = error = None


async def _call(call: HandlerCall) -> Any:
    if call.mode == "async":
        return await call.fn(call.ctx)
    if call.mode == "inline":
        return call.fn(call.ctx)
    return await _in_thread(call.fn, call.ctx)


async def _in_thread(fn: Callable[[Context], Any], ctx: Context) -> Any:
    """``fn(ctx)`` in the default executor. If the caller is cancelled meanwhile, wait for the
    thread to return first (it cannot be stopped, and the protocol must not free the lease
    under a step still running), however often the cancellation is repeated, then let the
    cancellation through."""
    running = asyncio.ensure_future(asyncio.to_thread(fn, ctx))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        while not running.done():
            try:
                await asyncio.wait({running})
            except asyncio.CancelledError:
                continue  # cancelled again: still wait for the thread
        if not running.cancelled():
            running.exception()  # seen: its outcome is dropped with the cancelled message
        raise
