"""AsyncEngine: the same protocol as Engine, driven on asyncio (async stores, async handlers,
threads for blocking handlers, cancellation)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from fsm import AsyncEngine, Engine
from fsm.errors import StepFailed
from tests.fsm.async_flows import AsyncCounter


def _engine(flow: AsyncCounter | None = None, **options: object) -> AsyncEngine:
    return AsyncEngine(flow or AsyncCounter(), AsyncMemoryStore(), **options)  # type: ignore[arg-type]


def test_an_async_flow_on_the_sync_engine_fails_at_construction() -> None:
    with pytest.raises(
        TypeError,
        match=r"async def handlers \(count, place, prompt, side, start\).*"
        r"fsm\.AsyncEngine",
    ):
        Engine(AsyncCounter(), MemoryStore())


def test_async_handlers_and_hooks_are_awaited() -> None:
    async def main() -> None:
        engine = _engine()
        first = await engine.handle("u", "go", message_id="m1")
        assert (first.texts, first.snapshot.stage, first.snapshot.version) == (
            ["counting"],
            "counting",
            1,
        )
        second = await engine.handle("u", "x", message_id="m2")
        assert second.texts == ["1"] and second.snapshot.data == {"count": 1}
        again = await engine.handle("u", "x", message_id="m2")  # a re-delivery
        assert again.duplicate and again.snapshot.version == 2
        assert (await engine.peek("u")) == second.snapshot
        assert engine.stats["applied"] == 2 and engine.stats["duplicates"] == 1

    asyncio.run(main())


def test_a_failing_async_handler_is_step_failed_and_changes_nothing() -> None:
    async def main() -> None:
        engine = _engine()
        await engine.handle("u", "go")
        before = await engine.peek("u")
        with pytest.raises(StepFailed) as caught:
            await engine.handle("u", "boom")
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert await engine.peek("u") == before

    asyncio.run(main())


def test_a_blocking_def_handler_does_not_block_the_loop() -> None:
    """A plain def handler runs in a worker thread: while it sleeps 0.4 s, another
    conversation on the same loop goes through ten messages."""

    async def main() -> None:
        engine = _engine()
        for user in ("slow", "fast"):
            await engine.handle(user, "go")
        await engine.handle("slow", "thread")
        finished: dict[str, float] = {}

        async def slow() -> None:
            await engine.handle("slow", "slow")
            finished["slow"] = time.perf_counter()

        async def fast() -> None:
            for _ in range(10):
                await engine.handle("fast", "x")
            finished["fast"] = time.perf_counter()

        await asyncio.gather(slow(), fast())
        assert finished["fast"] < finished["slow"]
        assert (await engine.peek("fast")).data["count"] == 10  # type: ignore[union-attr]
        assert (await engine.peek("slow")).data["count"] == 1  # type: ignore[union-attr]

    asyncio.run(main())


def test_plain_handlers_run_in_a_thread_unless_marked_non_blocking() -> None:
    flow = AsyncCounter()

    async def main() -> int:
        engine = _engine(flow)
        await engine.handle("a", "go")
        await engine.handle("a", "thread")
        await engine.handle("a", "x")
        await engine.handle("b", "go")
        await engine.handle("b", "inline")
        await engine.handle("b", "x")
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert flow.threads["inline"] == loop_thread
    assert flow.threads["thread"] != loop_thread


def test_side_effect_steps_never_overlap_across_concurrent_tasks() -> None:
    flow = AsyncCounter()

    async def main() -> AsyncEngine:
        engine = _engine(flow)
        await engine.handle("u", "go")
        await engine.handle("u", "side")
        await asyncio.gather(*(engine.handle("u", "x", message_id=f"m{i}") for i in range(40)))
        return engine

    engine = asyncio.run(main())
    assert (flow.side_effects, flow.overlaps) == (40, 0)
    snapshot = asyncio.run(engine.peek("u"))
    assert snapshot is not None and (snapshot.data["count"], snapshot.version) == (40, 42)


def test_cancelling_a_side_effect_step_frees_the_lease_and_a_redelivery_applies_once() -> None:
    flow = AsyncCounter()
    store = AsyncMemoryStore()

    async def main() -> None:
        engine = AsyncEngine(flow, store)
        await engine.handle("u", "go")
        await engine.handle("u", "side")
        parked = asyncio.create_task(engine.handle("u", "park", message_id="m-park"))
        while flow.in_critical == 0:
            await asyncio.sleep(0.001)
        assert await store.lock_info("u") is not None  # the step runs under the lease
        parked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await parked
        assert await store.lock_info("u") is None  # freed on the way out, not left to its TTL
        snapshot = await engine.peek("u")
        assert snapshot is not None and (snapshot.version, snapshot.data["count"]) == (2, 0)
        flow.gate.set()
        redelivered = await engine.handle("u", "park", message_id="m-park")
        assert not redelivered.duplicate and redelivered.snapshot.data == {"count": 1}
        again = await engine.handle("u", "park", message_id="m-park")
        assert again.duplicate and again.snapshot.version == 3

    asyncio.run(main())


def test_a_timeout_during_a_thread_handler_waits_for_the_thread_and_saves_nothing() -> None:
    async def main() -> None:
        store = AsyncMemoryStore()
        engine = AsyncEngine(AsyncCounter(), store)
        await engine.handle("u", "go")
        await engine.handle("u", "thread")
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await engine.handle("u", "slow", message_id="m1")
        # The thread could not be stopped: the cancellation waited for it (0.4 s), and the
        # result it computed was not saved.
        assert time.perf_counter() - started >= 0.35
        snapshot = await engine.peek("u")
        assert snapshot is not None and snapshot.version == 2
        assert (await engine.handle("u", "x", message_id="m1")).snapshot.data == {"count": 1}

    asyncio.run(main())


def test_a_flow_whose_handlers_never_block_runs_them_on_the_loop() -> None:
    """``Flow.blocking = False`` (here on the instance) is ``blocking=False`` on every plain
    handler: the reference bot sets it when its API client never blocks (the fake)."""
    flow = AsyncCounter()
    flow.blocking = False

    async def main() -> int:
        engine = _engine(flow)
        await engine.handle("a", "go")
        await engine.handle("a", "thread")
        await engine.handle("a", "x")
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert flow.threads["thread"] == loop_thread


def test_the_reference_bot_blocks_only_where_its_api_client_does() -> None:
    from flows.credex import CredexBot, FakeCredexApi

    assert CredexBot(FakeCredexApi()).blocking is False

    class HttpClient:  # any client that does not say it never blocks
        pass

    assert CredexBot(HttpClient()).blocking is True  # type: ignore[arg-type]


def test_a_repeated_cancellation_still_waits_for_a_thread_step_under_the_lease() -> None:
    """Cancelled twice (a timeout, then a disconnect) while a plain def side-effect step runs
    in its thread: the lease is kept until the thread returns, so the next message cannot run
    the same step beside it."""
    flow = AsyncCounter()

    async def main() -> None:
        engine = _engine(flow)
        await engine.handle("u", "go")
        await engine.handle("u", "tside")
        first = asyncio.create_task(engine.handle("u", "slow", message_id="m1"))
        while flow.in_critical == 0:
            await asyncio.sleep(0.005)
        first.cancel()
        await asyncio.sleep(0.01)
        first.cancel()
        second = asyncio.create_task(engine.handle("u", "x", message_id="m2"))
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert not isinstance(results[1], BaseException) and results[1].snapshot.data == {
            "count": 1
        }

    asyncio.run(main())
    assert (flow.overlaps, flow.side_effects) == (0, 2)


def test_an_engine_refuses_a_store_of_the_other_kind() -> None:
    with pytest.raises(TypeError, match=r"use fsm\.AsyncEngine"):
        Engine(AsyncCounter(), AsyncMemoryStore())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"use fsm\.Engine"):
        AsyncEngine(AsyncCounter(), MemoryStore())  # type: ignore[arg-type]


def test_an_interrupted_blocking_call_cancels_the_message_and_frees_the_lease() -> None:
    """Ctrl-C in ``fsm chat --async`` (or the kit): the message does not go on in the
    background holding the lease."""
    import signal

    from fsm.blocking import BlockingEngine

    flow = AsyncCounter()
    store = AsyncMemoryStore()
    engine = BlockingEngine(AsyncEngine(flow, store))
    engine.handle("u", "go")
    engine.handle("u", "side")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.handle("u", "park", message_id="m1")  # waits on a gate nobody opens
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert flow.in_critical == 0 and store.sync.lock_info("u") is None
    snapshot = engine.peek("u")
    assert snapshot is not None and snapshot.version == 2  # nothing applied behind our back
