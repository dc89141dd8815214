"""Review: fire_due when one firing's ``on_result`` (or a store call outside the firing's own
error handling, such as the verdict's re-index) raises.

Async: ``asyncio.gather`` without ``return_exceptions`` returns at the first error while the
other firings keep running as orphan tasks; ``finally`` settles only the claims settled so far,
so a firing that ends afterwards never has its claim settled, and its ``on_result`` runs after
``fire_due`` has already raised (the caller's round is over, its ``stop`` honoured).

Sync: the claims not reached yet are neither fired nor given back (hidden for claim_hold), and
the ones already fired are not settled."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from adapters import AsyncMemoryStore, MemoryStore
from fsm import AsyncEngine, Engine, FakeClock
from tests.timers.timer_flows import Nudge


class SlowFor(AsyncMemoryStore):
    """Loads of ``slow`` take a while (a slow shard, a network hiccup)."""

    slow = ""

    async def load(self, user_key: str, **kw: Any) -> Any:
        if user_key == self.slow:
            await asyncio.sleep(0.05)
        return await super().load(user_key, **kw)


def test_async_fire_due_leaves_orphan_firings_and_unsettled_claims() -> None:
    clock = FakeClock()
    sync = MemoryStore(clock=clock)
    store = SlowFor(sync)
    engine = AsyncEngine(Nudge(), store, clock=clock)
    late_calls: list[str] = []

    async def scenario() -> None:
        for user in ("a", "b"):
            for n, text in enumerate(("hi", "1", "5")):
                await engine.handle(user, text, message_id=f"{user}{n}")
        clock.advance(600)
        store.slow = "b"
        returned = False

        async def on_result(user: str, result: Any) -> None:
            if user == "a":
                raise ConnectionError("channel down")
            if returned:
                late_calls.append(user)

        with contextlib.suppress(ConnectionError):
            await engine.fire_due(on_result=on_result)
        returned = True
        await asyncio.sleep(0.2)  # the orphan firing of "b" finishes now
        stats = sync.due_stats(clock.now())
        assert (stats.claimed, late_calls) == (0, []), (
            f"after fire_due raised: {stats.claimed} claim(s) left unsettled, on_result still "
            f"called for {late_calls} after fire_due returned"
        )

    asyncio.run(scenario())


def test_sync_fire_due_goes_on_past_an_on_result_error_and_settles_the_batch() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    engine = Engine(Nudge(), store, clock=clock)
    for user in ("a", "b", "c"):
        for n, text in enumerate(("hi", "1", "5")):
            engine.handle(user, text, message_id=f"{user}{n}")
    clock.advance(600)

    def on_result(user: str, result: Any) -> None:
        if user == "a":
            raise ConnectionError("channel down")

    handed: list[str] = []

    def counting(user: str, result: Any) -> None:
        handed.append(user)
        on_result(user, result)

    with contextlib.suppress(ConnectionError):
        engine.fire_due(on_result=counting)
    # The error is raised once the batch is done: "b" and "c" fired and were handed on too,
    # and no claim is left stranded for claim_hold.
    assert sorted(handed) == ["a", "b", "c"]
    stats = store.due_stats(clock.now())
    assert stats.claimed == 0, f"stranded: {stats}"
    assert engine.fire_due() == 0
