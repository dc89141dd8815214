"""The reference Credex bot: its flow, its API port and an in-memory fake of that API.

>>> engine = build_engine()
>>> result = engine.handle("263770000002", "hi")
>>> result.snapshot.stage
'menu'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters import MemoryStore, Store
from flows.credex.api import CredexApi
from flows.credex.fake import FakeCredexApi
from flows.credex.flow import CredexBot
from fsm import Engine, TokenVerifier
from fsm.clock import SYSTEM_CLOCK, Clock

__all__ = ["CredexBot", "FakeCredexApi", "build_engine"]


def build_engine(
    store: Store | None = None,
    api: CredexApi | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    jwt_key: Any = None,
    jwt_algorithms: Sequence[str] = ("HS256",),
    jwt_leeway: float = 30.0,
    **options: Any,
) -> Engine:
    """The Credex bot wired to ``store`` (a fresh :class:`MemoryStore` by default) and ``api``
    (the :class:`FakeCredexApi` by default). ``jwt_key`` verifies the API's tokens; with the
    fake it defaults to the fake's signing key. Other ``options`` go to :class:`fsm.Engine`
    (``session_ttl``, ``max_attempts``, ``lock_ttl``, ``source``, ...)."""
    if api is None:
        api = FakeCredexApi(clock=clock)
    if jwt_key is None:
        if not isinstance(api, FakeCredexApi):
            raise ValueError("pass jwt_key: the key that verifies your Credex API's tokens")
        jwt_key = api.verification_key
    verifier = TokenVerifier(jwt_key, algorithms=jwt_algorithms, leeway=jwt_leeway, clock=clock)
    return Engine(
        CredexBot(api),
        store if store is not None else MemoryStore(clock=clock),
        verifier=verifier,
        clock=clock,
        **options,
    )
