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
import concurrent.futures
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from fsm.attachments import Attachment
from fsm.effects import (
    Download,
    Guard,
    HandlerCall,
    Sleep,
    Steps,
    StoreCall,
    Unguard,
    Upload,
)
from fsm.errors import FsmError
from fsm.inflight import Held, Sending
from fsm.protocol import MessageProtocol, Result
from fsm.redaction import user_tail
from fsm.snapshot import Snapshot
from fsm.step import Context
from fsm.store import AsyncSessionStore

if TYPE_CHECKING:
    from fsm.flow import Flow

__all__ = ["AsyncEngine"]

T = TypeVar("T")

log = logging.getLogger("fsm.engine")


class AsyncEngine(MessageProtocol[AsyncSessionStore]):
    """Runs a flow against an async store; the options, ``stats``, ``Result`` and errors are
    those of :class:`fsm.Engine`."""

    calls_in_place = frozenset({"inline"})  # a handler that never blocks runs on the loop

    #: How long :meth:`sent` waits before writing a confirmation, so that the user's next
    #: message, if it comes meanwhile, writes it with its own save (one write, not two).
    confirm_delay: float = 0.2

    def __init__(self, flow: Flow, store: AsyncSessionStore, **options: Any) -> None:
        if not isinstance(store, AsyncSessionStore):
            raise TypeError(
                f"AsyncEngine needs an async store (fsm.store.AsyncSessionStore: "
                f"AsyncMemoryStore, AsyncRedisStore), got {type(store).__name__}: "
                "use fsm.Engine with a sync store"
            )
        super().__init__(flow, store, **options)
        self._flushes: dict[str, asyncio.TimerHandle] = {}
        self._writing: set[asyncio.Task[None]] = set()

    async def handle(
        self,
        user_id: str,
        text: str,
        *,
        message_id: str | None = None,
        pressed: str | None = None,
        attachment: Attachment | None = None,
    ) -> Result:
        """Apply one user message and return the replies, after the new state is saved
        (as :meth:`fsm.Engine.handle`)."""
        return await self._drive(self.message(user_id, text, message_id, pressed, attachment))

    async def notify(
        self,
        user_id: str,
        event: str,
        *,
        data: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> Result:
        """Apply an external event (as :meth:`fsm.Engine.notify`)."""
        return await self._drive(self.event_steps(user_id, event, data, event_id))

    #: How many claimed timers :meth:`fire_due` fires at once.
    fire_concurrency: int = 16

    async def fire_due(
        self,
        *,
        limit: int | None = None,
        on_result: Callable[[str, Result], Awaitable[None] | None] | None = None,
    ) -> int:
        """Fire the timers due by the engine's clock (as :meth:`fsm.Engine.fire_due`), up to
        :attr:`fire_concurrency` at once; ``on_result`` may be a coroutine function."""
        if self.fire_concurrency < 1:
            raise ValueError("fire_concurrency must be >= 1")
        # A few batches' worth, not more: a claim hides its entries for claim_hold only.
        claims = await self._drive(self.claim_steps(limit or 4 * self.fire_concurrency))
        gate = asyncio.Semaphore(self.fire_concurrency)
        settled: list[Any] = []

        async def fire(claim: Any) -> int:
            async with gate:
                done = await self._drive(self.fire_one_steps(claim))
            if done.settle:
                settled.append(claim)
            if done.result is not None and on_result is not None:
                pending = on_result(claim.user_key, done.result)
                if pending is not None:
                    await pending
            return int(done.fired)

        try:
            outcomes = await asyncio.gather(*(fire(c) for c in claims), return_exceptions=True)
        finally:
            await self._drive(self.settle_steps(settled))
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise errors[0]
        return sum(o for o in outcomes if isinstance(o, int))

    async def confirm(self, user_id: str, sent: Iterable[str], *, lease: str | None = None) -> bool:
        """Drop confirmed outbox entries, now (as :meth:`fsm.Engine.confirm`)."""
        return await self._drive(self.confirm_steps(user_id, sent, lease=lease))

    async def take_outbox(self, user_id: str) -> Sending | None:
        """Take the user's send lease and what is pending (as :meth:`fsm.Engine.take_outbox`)."""
        return await self._drive(self.take_outbox_steps(user_id))

    def sent(
        self, user_id: str, lease: str, keys: Iterable[str] = (), *, done: bool = False
    ) -> None:
        """Record outbox entries the channel accepted under ``lease`` (a result's, or
        :meth:`take_outbox`'s); ``done`` once the sending is over. The confirmation is written
        :attr:`confirm_delay` later (freeing the lease once ``done``), unless the user's next
        message comes first: its save then drops them and frees or renews the lease, in the
        one write it makes anyway. Until it is written, the lease keeps other workers from
        sending these replies again. Call it as each reply is accepted, not after the batch."""
        held = self._held.get(user_id)
        if held is None or held.lease != lease:
            held = self._held[user_id] = Held(lease, set(), time.monotonic())
        held.sent.update(keys)
        held.done = held.done or done
        self._flush_later(user_id)

    @property
    def settled(self) -> bool:
        """Whether every confirmation :meth:`sent` deferred is written (or given up)."""
        return not (self._held or self._flushes or self._writing)

    async def flush(self) -> None:
        """Write every deferred confirmation now (a server shutting down calls it)."""
        for handle in self._flushes.values():
            handle.cancel()
        self._flushes.clear()
        await asyncio.gather(*(self._flush(key) for key in list(self._held)))
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)

    def _flush_later(self, key: str) -> None:
        if key in self._flushes:
            return
        loop = asyncio.get_running_loop()
        self._flushes[key] = loop.call_later(self.confirm_delay, self._start_flush, key)

    def _start_flush(self, key: str) -> None:
        self._flushes.pop(key, None)
        task = asyncio.ensure_future(self._flush(key))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _flush(self, key: str) -> None:
        """Write the deferred confirmation of ``key``; if the store cannot take it, try again
        while the lease lasts (after that another worker sends them again: never lost)."""
        held = self._held.pop(key, None)
        if held is None or (not held.sent and not held.done):
            if held is not None:
                self._held.setdefault(key, held)
            return
        try:
            written = await self._drive(
                self.confirm_steps(key, held.sent, lease=held.lease, release=held.done)
            )
        except FsmError as exc:
            self.stats.incr("outbox_confirm_failures")
            log.warning("user %s: could not confirm sent replies yet (%s)", user_tail(key), exc)
            written = False
        if written and not held.done:
            self.sent(key, held.lease)  # still sending: renewed, further keys come
            self._held[key].since = time.monotonic()
        elif not written and time.monotonic() < held.since + (self.send_lease or 0.0):
            again = self._held.setdefault(key, Held(held.lease, set(), held.since))
            again.sent |= held.sent
            again.done = again.done or held.done
            self._flush_later(key)

    async def peek(self, user_id: str) -> Snapshot | None:
        """The stored snapshot, decoded, without changing anything (None if absent)."""
        return await self._drive(self.peek_steps(user_id))

    async def _drive(self, protocol: Steps[T]) -> T:
        """Run ``protocol`` to its end, awaiting each effect it yields. Any exception, a
        cancellation included, is thrown into the protocol where the effect was asked for."""
        store = self.store
        value: Any = None
        error: BaseException | None = None
        guard: _Guard | None = None
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
                    elif type(effect) is Upload:
                        assert self.media is not None  # asked for only with a channel
                        value = await self.media.upload(effect.media)
                    elif type(effect) is Download:
                        assert self.media is not None
                        value = await self.media.download(effect.media)
                    elif type(effect) is Guard:
                        guard = _Guard(store, effect)
                    elif type(effect) is Unguard:
                        value, guard = await guard.settle() if guard else None, None
                    else:
                        raise TypeError(f"not an effect: {effect!r}")
                except BaseException as exc:  # noqa: BLE001 - handed to the protocol
                    error = exc
        finally:
            # No cycle through this frame: an error's traceback must not keep the handler's
            # frames (and the payload, the token) alive until the cyclic collector runs.
            value = error = None
            if guard is not None:  # abandoned mid-decision: a lease it took is given back
                await guard.cancel()


class _Guard:
    """A :class:`~fsm.effects.Guard`'s call, made on the loop after its delay unless settled
    first (a timer, not a task: most decisions end long before it fires)."""

    def __init__(self, store: AsyncSessionStore, guard: Guard) -> None:
        self.store = store
        self.call = guard.call
        self.task: asyncio.Future[Any] | None = None
        self.timer = asyncio.get_running_loop().call_later(guard.after, self._start)

    def _start(self) -> None:
        call = self.call
        self.task = asyncio.ensure_future(
            getattr(self.store, call.method)(*call.args, **call.kwargs)
        )

    async def settle(self) -> Any:
        """The call's result if it was made (None if it failed), else cancel it: None."""
        if self.task is None:
            self.timer.cancel()
            return None
        try:
            return await asyncio.shield(self.task)
        except Exception:  # noqa: BLE001 - best effort: the save's compare-and-set decides
            return None

    async def cancel(self) -> None:
        """Settle it, and give back a lease it took (the caller is going away)."""
        try:
            taken = await self.settle()
            if taken is not None:
                key, owner = self.call.args[0], self.call.args[1]
                await self.store.release_lock(key, owner)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            log.warning("a guard's lease could not be given back; it expires by itself")


async def _call(call: HandlerCall) -> Any:
    if call.mode == "async":
        return await call.fn(call.ctx)
    if call.mode == "inline":
        return call.fn(call.ctx)
    return await _in_thread(call.fn, call.ctx)


#: The threads ``def`` handlers run in: a pool of the library's own, not the loop's default
#: executor, which the loop's own work needs (``getaddrinfo`` for a new connection): a handler
#: blocked on ``ctx.download()``, which the loop serves, must never hold the thread the loop
#: waits for.
_HANDLER_THREADS = 32
_handlers: concurrent.futures.ThreadPoolExecutor | None = None
_handlers_made = threading.Lock()


def _handler_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _handlers
    with _handlers_made:
        if _handlers is None:
            _handlers = concurrent.futures.ThreadPoolExecutor(
                _HANDLER_THREADS, thread_name_prefix="fsm-step"
            )
        return _handlers


async def _in_thread(fn: Callable[[Context], Any], ctx: Context) -> Any:
    """``fn(ctx)`` in a handler thread (:data:`_HANDLER_THREADS`, with this task's context
    variables). If the caller is cancelled meanwhile, wait for the thread to return first (it
    cannot be stopped, and the protocol must not free the lease under a step still running),
    however often the cancellation is repeated, then let the cancellation through."""
    variables = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    running = loop.run_in_executor(_handler_pool(), variables.run, fn, ctx)
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
