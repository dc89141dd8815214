"""The reference Credex bot: its flow, its API port and an in-memory fake of that API.

>>> engine = build_engine()
>>> result = engine.handle("263770000002", "hi")
>>> result.snapshot.stage
'menu'

With the in-memory fake, what the API tells a member's bot (an offer made to them) reaches the
engine at its next tick (``engine.fire_due()``): see :mod:`flows.credex.delivery`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters import AsyncMemoryStore, MemoryStore
from flows.credex.api import CredexApi
from flows.credex.delivery import AsyncDeliveringEngine, DeliveringEngine, Mailbox
from flows.credex.fake import FakeCredexApi
from flows.credex.flow import CredexBot
from fsm import AsyncEngine, Engine, TokenVerifier
from fsm.clock import SYSTEM_CLOCK, Clock
from fsm.store import AsyncSessionStore, SessionStore

__all__ = ["CredexBot", "FakeCredexApi", "build_async_engine", "build_engine"]


def build_engine(
    store: SessionStore | None = None,
    api: CredexApi | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    jwt_key: Any = None,
    jwt_algorithms: Sequence[str] = ("HS256",),
    jwt_leeway: float = 30.0,
    verifier: TokenVerifier | None = None,
    mailbox: Mailbox | None = None,
    **options: Any,
) -> Engine:
    """The Credex bot wired to ``store`` (a fresh :class:`MemoryStore` by default) and ``api``
    (the :class:`FakeCredexApi` by default). ``jwt_key`` verifies the API's tokens; with the
    fake it defaults to the fake's signing key; or pass a ready ``verifier`` (a JWKS one, see
    :mod:`flows.credex.settings`). Other ``options`` go to :class:`fsm.Engine`
    (``session_ttl``, ``max_attempts``, ``lock_ttl``, ``source``, ...).

    With a fake API that has no notifier yet, its notifications go to a new :class:`Mailbox`
    and the engine's ticker (``fire_due``) applies them; pass ``mailbox`` to have them applied
    from one you feed yourself (a fake behind an HTTP server, say)."""
    flow, verifier = _wired(api, clock, jwt_key, jwt_algorithms, jwt_leeway, verifier)
    store = store if store is not None else MemoryStore(clock=clock)
    mailbox = _mailbox(flow.api, mailbox)
    if mailbox is not None:
        return DeliveringEngine(
            flow, store, mailbox=mailbox, verifier=verifier, clock=clock, **options
        )
    return Engine(flow, store, verifier=verifier, clock=clock, **options)


def build_async_engine(
    store: AsyncSessionStore | None = None,
    api: CredexApi | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    jwt_key: Any = None,
    jwt_algorithms: Sequence[str] = ("HS256",),
    jwt_leeway: float = 30.0,
    verifier: TokenVerifier | None = None,
    mailbox: Mailbox | None = None,
    **options: Any,
) -> AsyncEngine:
    """:func:`build_engine` on :class:`fsm.AsyncEngine` (a fresh :class:`AsyncMemoryStore` by
    default). The bot's handlers are plain ``def``: those that call the API run in worker
    threads, the ones that only render run on the loop (``blocking=False``)."""
    flow, verifier = _wired(api, clock, jwt_key, jwt_algorithms, jwt_leeway, verifier)
    store = store if store is not None else AsyncMemoryStore(clock=clock)
    mailbox = _mailbox(flow.api, mailbox)
    if mailbox is not None:
        return AsyncDeliveringEngine(
            flow, store, mailbox=mailbox, verifier=verifier, clock=clock, **options
        )
    return AsyncEngine(flow, store, verifier=verifier, clock=clock, **options)


def _mailbox(api: CredexApi, mailbox: Mailbox | None) -> Mailbox | None:
    """The mailbox the engine delivers from: ``mailbox``, or a new one fed by a fake API that
    sends its notifications nowhere yet (None: nothing to deliver in-process)."""
    if mailbox is None and isinstance(api, FakeCredexApi) and api.notifier is None:
        mailbox = Mailbox()
        api.notifier = mailbox.put
    return mailbox


def _wired(
    api: CredexApi | None,
    clock: Clock,
    jwt_key: Any,
    algorithms: Sequence[str],
    leeway: float,
    verifier: TokenVerifier | None,
) -> tuple[CredexBot, TokenVerifier]:
    if api is None:
        api = FakeCredexApi(clock=clock)
    if verifier is not None:
        if jwt_key is not None:
            raise ValueError("pass jwt_key or verifier, not both")
        return CredexBot(api), verifier
    if jwt_key is None:
        if not isinstance(api, FakeCredexApi):
            raise ValueError("pass jwt_key: the key that verifies your Credex API's tokens")
        jwt_key = api.verification_key
    verifier = TokenVerifier(jwt_key, algorithms=algorithms, leeway=leeway, clock=clock)
    return CredexBot(api), verifier
