"""The engine: runs a flow against a :class:`~fsm.store.SessionStore`, one message at a time.

:class:`Engine` is a driver of a few dozen lines. The per-message algorithm (load, restore,
decide, save, act, return; retries, leases, dedupe, quarantine) lives in
:mod:`fsm.protocol`, written once with no I/O; its theory of operation is at the top of that
module. :class:`fsm.AsyncEngine` drives the same protocol on asyncio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from fsm.attachments import Attachment
from fsm.background import run
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
from fsm.inflight import Sending
from fsm.protocol import LOCK_AFTER_CONFLICTS, MAX_ACTIONS, MessageProtocol, Result
from fsm.snapshot import Snapshot
from fsm.store import SessionStore

if TYPE_CHECKING:
    from fsm.flow import Flow

__all__ = ["LOCK_AFTER_CONFLICTS", "MAX_ACTIONS", "Engine", "Result"]

T = TypeVar("T")


class Engine(MessageProtocol[SessionStore]):
    """Runs a flow against a store.

    >>> from adapters import MemoryStore
    >>> engine = Engine(my_flow, MemoryStore())            # doctest: +SKIP
    >>> result = engine.handle("263770000001", "hi")       # doctest: +SKIP
    >>> result.snapshot.stage, [r.body for r in result.replies]   # doctest: +SKIP

    Options (all keyword): ``verifier`` (a :class:`~fsm.auth.TokenVerifier`, required by a
    flow with protected stages), ``session_ttl``, ``max_attempts``, ``lock_ttl``,
    ``lock_wait``, ``clock``, ``source``, ``recent`` (records kept per process to skip a
    read) and the notices (``expired_notice``, ``reset_notice``, ``auth_notice``,
    ``abandon_notice``); :class:`fsm.AsyncEngine` takes the same.
    """

    calls_in_place = frozenset({"inline", "thread"})  # a sync driver calls every handler

    def __init__(self, flow: Flow, store: SessionStore, **options: Any) -> None:
        if not isinstance(store, SessionStore):
            raise TypeError(
                f"Engine needs a sync store (fsm.store.SessionStore: MemoryStore, RedisStore), "
                f"got {type(store).__name__}: use fsm.AsyncEngine with an async store"
            )
        super().__init__(flow, store, **options)
        found = self._decider.async_methods()
        if found:
            raise TypeError(
                f"flow {self.spec.name!r} has async def handlers ({', '.join(found)}): "
                "run it with fsm.AsyncEngine on an async store"
            )

    def handle(
        self,
        user_id: str,
        text: str,
        *,
        message_id: str | None = None,
        pressed: str | None = None,
        attachment: Attachment | None = None,
    ) -> Result:
        """Apply one user message and return the replies, after the new state is saved.

        ``user_id`` is the conversation key chosen by the transport (a phone number, a chat
        id). ``message_id``, when the transport has one, makes re-deliveries harmless: a
        message id already applied for this user is acknowledged (``result.duplicate``)
        without being applied again. ``pressed`` is the id of the option the user tapped (a
        button or list row), when the message is a tap rather than typed text: the step sees
        it as ``ctx.pressed``. ``attachment`` is what the user sent besides text (a file, a
        place, a reaction, contact cards: :mod:`fsm.attachments`; ``text`` is then its
        caption or ""): a step that accepts its kind sees it (``ctx.media``...).
        """
        return self._drive(self.message(user_id, text, message_id, pressed, attachment))

    def notify(
        self,
        user_id: str,
        event: str,
        *,
        data: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> Result:
        """Apply the external event ``event`` to the user's conversation, wherever it is: the
        handler declared with :func:`fsm.on_event` for its stage (or for every stage) sees
        ``ctx.event`` (name, ``data``, ``event_id``). An ``event_id`` already applied for this
        user is acknowledged (``result.duplicate``), not applied again. When no handler
        applies (none for this stage; no conversation, and the handler does not start one)
        nothing changes and ``result.ignored`` says why. ``ValueError`` for an event the flow
        does not declare."""
        return self._drive(self.event_steps(user_id, event, data, event_id))

    def fire_due(
        self,
        *,
        limit: int | None = None,
        on_result: Callable[[str, Result], None] | None = None,
    ) -> int:
        """Fire the timers due by the engine's clock (at most ``limit`` index entries, else a
        batch of :data:`fsm.firing.FIRE_BATCH`) and return how many fired. Each firing is
        saved like a message; ``on_result(user_id, result)`` is called with its result, to
        send its replies (the outbox keeps them until confirmed). Any number of tickers may
        run it at once, on any number of processes: each due timer fires once."""
        claims = self._drive(self.claim_steps(limit))
        fired, settled = 0, []
        failure: BaseException | None = None
        try:
            for claim in claims:
                done = self._drive(self.fire_one_steps(claim))
                if done.settle:
                    settled.append(claim)
                fired += done.fired
                if done.result is None or on_result is None:
                    continue
                try:
                    on_result(claim.user_key, done.result)
                except Exception as exc:  # noqa: BLE001 - the batch goes on; raised at the end
                    failure = failure or exc
        finally:
            self._drive(self.settle_steps(settled))
        if failure is not None:
            raise failure
        return fired

    def confirm(self, user_id: str, sent: Iterable[str], *, lease: str | None = None) -> bool:
        """Drop the outbox entries with these keys (:attr:`Outgoing.key`): the channel
        accepted them. With ``lease`` (a result's :attr:`~fsm.result.Result.lease`, or
        :meth:`take_outbox`'s), the same write frees the send lease. False if that could not
        be saved (they stay pending, to be sent again: never lost)."""
        return self._drive(self.confirm_steps(user_id, sent, lease=lease))

    def take_outbox(self, user_id: str) -> Sending | None:
        """Take the user's send lease, waiting for another worker's (up to ``lock_wait``,
        then :class:`~fsm.errors.LockTimeout`), and the replies still pending under it;
        None if none is (nothing to send). Confirm with its ``lease``."""
        return self._drive(self.take_outbox_steps(user_id))

    def peek(self, user_id: str) -> Snapshot | None:
        """The stored snapshot, decoded, without changing anything (None if absent)."""
        return self._drive(self.peek_steps(user_id))

    def _drive(self, protocol: Steps[T]) -> T:
        """Run ``protocol`` to its end: perform each effect it yields and send the result back
        (or throw the exception in, where the effect was asked for)."""
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
                        value = getattr(store, effect.method)(*effect.args, **effect.kwargs)
                    elif type(effect) is HandlerCall:  # (the protocol calls them in place)
                        value = effect.fn(effect.ctx)
                    elif type(effect) is Sleep:
                        time.sleep(effect.seconds)
                    elif type(effect) is Guard or type(effect) is Unguard:
                        value = None  # no concurrency here: a guard is never made
                    elif type(effect) is Upload:
                        assert self.media is not None  # asked for only with a channel
                        value = _on_background(self.media.upload(effect.media))
                    elif type(effect) is Download:
                        assert self.media is not None
                        value = _on_background(self.media.download(effect.media))
                    else:
                        raise TypeError(f"not an effect: {effect!r}")
                except BaseException as exc:  # noqa: BLE001 - handed to the protocol
                    error = exc
        finally:
            # No cycle through this frame: an error's traceback must not keep the handler's
            # frames (and the payload, the token) alive until the cyclic collector runs.
            value = error = None


def _on_background(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a media channel's coroutine on the library's background event loop: this engine
    may be called from code that runs a loop of its own (``asyncio.run`` would refuse), and
    the channel's connections stay on one loop."""
    return run(coroutine)
