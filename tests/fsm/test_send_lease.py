"""The send lease: whoever sends a user's outbox holds the user's lease, confirmations are
deferred and folded into the user's next save, and a slow decision makes the user's next
message wait. Two AsyncEngines on one store are two workers; real threads and timers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from fsm import Context, Flow, Outcome, Stage, step
from fsm.async_engine import AsyncEngine
from fsm.errors import LockTimeout

from .sample_flows import Counter


def worker(store: MemoryStore, flow: Flow | None = None, **options: Any) -> AsyncEngine:
    options.setdefault("lock_wait", 2.0)
    engine = AsyncEngine(flow or Counter(), AsyncMemoryStore(store), outbox=True, **options)
    engine.send_lease = 5.0
    return engine


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def history(store: MemoryStore, user: str = "u") -> list[str]:
    return [entry.event for entry in reversed(store.history(user))]


def test_the_save_keeps_the_lease_for_its_replies_and_the_confirmation_frees_it() -> None:
    store = MemoryStore()

    async def scenario() -> None:
        a, b = worker(store), worker(store)
        result = await a.handle("u", "go", message_id="m1")
        assert result.lease is not None and [o.reply.body for o in result.outbox] == ["counting"]
        assert store.lock_info("u") is not None  # held while the reply is being sent
        # The same message at another worker: nothing to send until the lease is free.
        again = await b.handle("u", "go", message_id="m1")
        assert again.duplicate and again.lease is None
        waiting = asyncio.ensure_future(b.take_outbox("u"))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # waits for the worker that sends them
        a.sent("u", result.lease, [o.key for o in result.outbox], done=True)
        assert await waiting is None  # confirmed meanwhile: nothing left to send
        assert store.lock_info("u") is None and a.settled

    run(scenario())
    assert history(store) == ["begin", "sent"]


def test_a_confirmation_is_folded_into_the_next_save() -> None:
    store = MemoryStore()

    async def scenario() -> None:
        a = worker(store)
        a.confirm_delay = 5.0  # the next message comes first
        first = await a.handle("u", "go", message_id="m1")
        assert first.lease is not None
        a.sent("u", first.lease, [o.key for o in first.outbox], done=True)
        second = await a.handle("u", "x", message_id="m2")
        assert [o.reply.body for o in second.outbox] == ["1"]  # "counting" confirmed with it
        assert second.lease == first.lease  # the lease renewed, not taken again
        a.sent("u", second.lease, [o.key for o in second.outbox], done=True)
        await a.flush()
        assert store.lock_info("u") is None

    run(scenario())
    # One write per message, and the flush at the end: no version or entry per confirmation
    # while the user writes on.
    assert history(store) == ["begin", "", "sent"]  # ("": the step stayed)


def test_a_deferred_confirmation_is_written_after_the_delay() -> None:
    store = MemoryStore()

    async def scenario() -> None:
        a = worker(store)
        a.confirm_delay = 0.05
        result = await a.handle("u", "go", message_id="m1")
        assert result.lease is not None
        a.sent("u", result.lease, [result.outbox[0].key], done=True)
        assert not a.settled
        deadline = time.monotonic() + 5
        while not a.settled:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    run(scenario())
    assert store.lock_info("u") is None
    snapshot = MemoryStore.load(store, "u").record
    assert snapshot is not None and history(store) == ["begin", "sent"]


def test_the_next_message_at_another_worker_waits_for_the_sender() -> None:
    store = MemoryStore()

    async def scenario() -> list[str]:
        a, b = worker(store), worker(store)
        a.confirm_delay = 0.3
        first = await a.handle("u", "go", message_id="m1")
        assert first.lease is not None
        a.sent("u", first.lease, [first.outbox[0].key], done=True)
        started = time.monotonic()
        second = await b.handle("u", "x", message_id="m2")  # waits for a's confirmation
        assert time.monotonic() - started >= 0.2
        return [o.reply.body for o in second.outbox]

    assert run(scenario()) == ["1"]  # "counting" was confirmed first: not sent again
    assert history(store) == ["begin", "sent", ""]


def test_a_lease_still_held_when_the_wait_ends_is_a_lock_timeout() -> None:
    store = MemoryStore()

    async def scenario() -> None:
        a, b = worker(store), worker(store, lock_wait=0.2)
        result = await a.handle("u", "go", message_id="m1")
        assert result.lease is not None
        with pytest.raises(LockTimeout):
            await b.take_outbox("u")

    run(scenario())


class Slow(Flow):
    """ "slow" takes 0.4 s to decide (an API lookup, in a worker thread); anything else is
    recorded at once."""

    name = "slow"
    takes_first_message = True
    stages = (Stage("idle", ("take",)),)

    @step("idle", "take")
    def take(self, ctx: Context) -> Outcome:
        if ctx.text == "slow":
            time.sleep(0.4)
        seen = [*ctx.data.get("seen", []), ctx.text]
        return ctx.stay(ctx.text, set={"seen": seen})


def test_a_slow_decision_makes_the_next_message_on_another_worker_wait() -> None:
    store = MemoryStore()

    async def scenario() -> None:
        a, b = worker(store, Slow()), worker(store, Slow())
        first = asyncio.ensure_future(a.handle("u", "slow", message_id="m1"))
        await asyncio.sleep(0.15)  # 'slow' is being decided, and has taken the lease
        second = asyncio.ensure_future(b.handle("u", "fast", message_id="m2"))
        done = await first
        assert done.lease is not None and not second.done()
        a.sent("u", done.lease, [o.key for o in done.outbox], done=True)
        assert (await second).snapshot.data["seen"] == ["slow", "fast"]

    run(scenario())


def test_without_the_send_lease_a_slow_decision_is_overtaken() -> None:
    """The same race without the lease (the engine's default): the reason for it."""
    store = MemoryStore()

    async def scenario() -> list[str]:
        a = AsyncEngine(Slow(), AsyncMemoryStore(store), outbox=True)
        b = AsyncEngine(Slow(), AsyncMemoryStore(store), outbox=True)
        first = asyncio.ensure_future(a.handle("u", "slow", message_id="m1"))
        await asyncio.sleep(0.15)
        await b.handle("u", "fast", message_id="m2")
        return list((await first).snapshot.data["seen"])

    assert run(scenario()) == ["fast", "slow"]


def test_the_sync_engine_takes_and_frees_the_send_lease_too() -> None:
    from fsm import Engine

    store = MemoryStore()
    engine = Engine(Counter(), store, outbox=True, send_lease=5.0)
    result = engine.handle("u", "go", message_id="m1")
    assert result.lease is not None and store.lock_info("u") is not None
    assert engine.confirm("u", [o.key for o in result.outbox], lease=result.lease)
    assert store.lock_info("u") is None and engine.peek("u").outbox == ()
    assert engine.take_outbox("u") is None  # nothing pending: the lease is not kept
    assert store.lock_info("u") is None


def test_taking_the_outbox_during_a_deferred_confirmation_frees_the_lease_after() -> None:
    """A re-delivery in the same process while a confirmation waits: the lease is reused,
    nothing is sent again, and the lease is freed (found by review: it stayed held)."""
    store = MemoryStore()

    async def scenario() -> None:
        a, b = worker(store), worker(store, lock_wait=1.0)
        a.confirm_delay = 0.05
        result = await a.handle("u", "go", message_id="m1")
        assert result.lease is not None
        a.sent("u", result.lease, [o.key for o in result.outbox], done=True)
        assert await a.take_outbox("u") is None  # sent already: nothing to send
        deadline = time.monotonic() + 5
        while not a.settled:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert store.lock_info("u") is None
        assert [o.reply.body for o in (await b.handle("u", "x", message_id="m2")).outbox] == ["1"]

    run(scenario())


def test_a_cancelled_take_outbox_gives_the_lease_back() -> None:
    store = MemoryStore()

    async def scenario() -> None:
        a, b = worker(store), worker(store, lock_wait=3.0)
        result = await a.handle("u", "go", message_id="m1")
        assert result.lease is not None
        taking = asyncio.ensure_future(b.take_outbox("u"))  # waits for a's lease
        await asyncio.sleep(0.1)
        a.sent("u", result.lease, (), done=True)  # nothing sent: the lease is freed
        await asyncio.sleep(0.05)
        taking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await taking
        await asyncio.sleep(0.3)
        assert store.lock_info("u") is None  # whoever got it gave it back

    run(scenario())
