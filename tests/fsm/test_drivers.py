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
