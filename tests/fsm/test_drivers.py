"""What both drivers of the message protocol share: no reference cycle keeps a failed
message's frames (its data, its token) alive."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from fsm import AsyncEngine, Context, Engine, Flow, Outcome, Stage, step
from fsm.effects import HandlerCall, StoreCall
from fsm.errors import StepFailed


class Secret:
    """Stands for what a handler holds: a payload, a token."""


class Failing(Flow):
    name = "failing"
    takes_first_message = True
    stages = (Stage("s", ("ask",)),)
    transitions = ()

    def __init__(self) -> None:
        self.held: list[weakref.ref[Secret]] = []

    @step("s", "ask", blocking=False)
    def ask(self, ctx: Context) -> Outcome:
        secret = Secret()
        self.held.append(weakref.ref(secret))
        raise RuntimeError("handler bug")


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_failed_message_leaves_nothing_alive_without_the_cyclic_collector(
    kind: str, no_gc: None
) -> None:
    flow = Failing()
    if kind == "sync":
        engine = Engine(flow, MemoryStore())
        for _ in range(20):
            with pytest.raises(StepFailed):
                engine.handle("u", "x")
    else:
        aengine = AsyncEngine(flow, AsyncMemoryStore())

        async def main() -> None:
            for _ in range(20):
                with pytest.raises(StepFailed):
                    await aengine.handle("u", "x")

        asyncio.run(main())
    assert len(flow.held) == 20
    assert [ref for ref in flow.held if ref() is not None] == []


class Blocking(Flow):
    """A handler that may block (the default)."""

    name = "blocking"
    takes_first_message = True
    stages = (Stage("s", ("ask",)),)
    transitions = ()

    @step("s", "ask")
    def ask(self, ctx: Context) -> Outcome:
        return ctx.stay(f"heard {ctx.text}")


class MarkedStep(Flow):
    """A handler marked as never blocking, in a flow that may block."""

    name = "marked"
    takes_first_message = True
    stages = (Stage("s", ("ask",)),)
    transitions = ()

    @step("s", "ask", blocking=False)
    def ask(self, ctx: Context) -> Outcome:
        return ctx.stay(f"heard {ctx.text}")


class NonBlocking(Blocking):
    name = "non-blocking"
    blocking = False  # every handler of this flow may run on the event loop


def _effects(engine: Engine | AsyncEngine, store: MemoryStore, text: str) -> list[str]:
    """Drive ``engine``'s protocol for one message by hand, with a sync store behind it for
    both engines, and name each effect it yields."""
    steps = engine.message("u", text, None)
    names: list[str] = []
    value: object = None
    while True:
        try:
            effect = steps.send(value)
        except StopIteration as done:
            assert done.value.replies[-1].body == f"heard {text}"
            return names
        if isinstance(effect, StoreCall):
            names.append(f"store.{effect.method}")
            value = getattr(store, effect.method)(*effect.args, **effect.kwargs)
        else:
            assert isinstance(effect, HandlerCall)
            names.append(f"handler:{effect.mode}")
            value = effect.fn(effect.ctx)


COLD = ["store.load", "store.history"]


def test_each_engine_calls_in_place_the_handlers_its_driver_would_call_there() -> None:
    """The sync engine calls every handler where it is; the async one only those that never
    block (the others run in a worker thread, so they are handed to its driver)."""
    store = MemoryStore()
    sync = Engine(Blocking(), store)
    assert _effects(sync, store, "hi") == [*COLD, "store.save"]
    assert _effects(sync, store, "again") == ["store.save"]  # warm: the save alone

    astore = MemoryStore()
    threaded = AsyncEngine(Blocking(), AsyncMemoryStore())
    assert _effects(threaded, astore, "hi") == [*COLD, "handler:thread", "store.save"]
    assert _effects(threaded, astore, "again") == ["handler:thread", "store.save"]
    for flow in (MarkedStep(), NonBlocking()):
        inline = AsyncEngine(flow, AsyncMemoryStore())
        istore = MemoryStore()
        assert _effects(inline, istore, "hi") == [*COLD, "store.save"], flow.name
        assert _effects(inline, istore, "again") == ["store.save"], flow.name
