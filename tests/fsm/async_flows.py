"""Flows with ``async def`` handlers (and plain ones of each kind) for the AsyncEngine tests."""

from __future__ import annotations

import asyncio
import threading
import time

from fsm import Context, Flow, Outcome, Stage, action, on_enter, step


class AsyncCounter(Flow):
    """Counts messages with ``async def`` handlers; "slow" blocks its worker thread, "side"
    counts under the lease, "park" waits on :attr:`gate`, "boom" fails."""

    name = "async-counter"
    takes_first_message = True
    stages = (
        Stage("idle", ("start",)),
        Stage("counting", ("count", "side", "thread", "inline", "place", "tside")),
    )
    transitions = (("begin", "idle", "counting"),)

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = 0
        self.threads: dict[str, int] = {}
        self.side_effects = 0
        self.in_critical = 0
        self.overlaps = 0
        self._guard = threading.Lock()
        self.orders: dict[str, int] = {}  # idempotency key -> times the "API" was called

    @step("idle", "start")
    async def start(self, ctx: Context) -> Outcome:
        await asyncio.sleep(0)
        return ctx.go("begin", set={"count": 0})

    @on_enter("counting", "count")
    async def prompt(self, ctx: Context) -> list[str]:
        await asyncio.sleep(0)
        return ["counting"]

    @step("counting", "count")
    async def count(self, ctx: Context) -> Outcome:
        self.entered += 1
        if ctx.text == "park":
            await self.gate.wait()
        if ctx.text == "boom":
            raise RuntimeError("handler bug")
        if ctx.text in ("side", "thread", "inline", "tside"):
            return ctx.stay(step=ctx.text)
        if ctx.text == "order":
            return ctx.stay(step="place")
        await asyncio.sleep(0)
        return _add(ctx)

    @step("counting", "side", side_effects=True)
    async def side(self, ctx: Context) -> Outcome:
        self.in_critical += 1
        self.overlaps += self.in_critical > 1
        try:
            if ctx.text == "park":
                await self.gate.wait()
            await asyncio.sleep(0.001)
            self.side_effects += 1
        finally:
            self.in_critical -= 1
        return _add(ctx)

    @step("counting", "thread")
    def thread(self, ctx: Context) -> Outcome:
        """A plain def: the async engine runs it in a worker thread."""
        self.threads["thread"] = threading.get_ident()
        if ctx.text == "slow":
            time.sleep(0.4)  # blocking I/O, as a sync HTTP client would do
        return _add(ctx)

    @step("counting", "tside", side_effects=True)
    def tside(self, ctx: Context) -> Outcome:
        """A plain def under the lease, in a worker thread; "slow" blocks it 0.3 s."""
        with self._guard:
            self.in_critical += 1
            self.overlaps += self.in_critical > 1
        try:
            if ctx.text == "slow":
                time.sleep(0.3)
            self.side_effects += 1
        finally:
            with self._guard:
                self.in_critical -= 1
        return _add(ctx)

    @step("counting", "inline", blocking=False)
    def inline(self, ctx: Context) -> Outcome:
        """Marked as doing no blocking I/O: it runs on the loop."""
        self.threads["inline"] = threading.get_ident()
        return _add(ctx)

    @action("counting", "place")
    async def place(self, ctx: Context) -> Outcome:
        """An action: "calls an API" with the idempotency key, then counts."""
        await asyncio.sleep(0)
        self.orders[ctx.idempotency_key] = self.orders.get(ctx.idempotency_key, 0) + 1
        n = ctx.data["count"] + 1
        return ctx.stay("ordered", step="count", set={"count": n})


def _add(ctx: Context) -> Outcome:
    n = ctx.data["count"] + 1
    return ctx.stay(str(n), set={"count": n})
