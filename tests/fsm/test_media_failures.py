"""What goes wrong around files, and what must not follow from it (regressions found by a
review): a step whose reply carries a file runs once per message, a failed upload after a
side effect is not re-delivered, a media outage does not reset conversations, a sync engine
called from async code still uploads, a timer whose file is refused is dropped, and handlers
blocked on downloads never starve the event loop's own threads."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from fsm import (
    AsyncEngine,
    Context,
    Engine,
    FakeClock,
    Flow,
    InboundMedia,
    MediaError,
    Outcome,
    Stage,
    document,
    image,
    step,
    timeout,
)
from fsm.errors import StepFailed
from fsm.media_replies import OutboundMedia
from fsm.memory_media import MemoryMedia
from tests.fsm.sample_flows import Receipts

CHARGES: list[str] = []


class Pay(Flow):
    """A step with a side effect (a charge) whose reply is a receipt made from bytes."""

    name = "pay"
    takes_first_message = True
    stages = (Stage("open", ("pay",)),)
    transitions = ()

    @step("open", "pay", side_effects=True)
    def pay(self, ctx: Context) -> Outcome:
        CHARGES.append(ctx.text)
        receipt = f"paid {ctx.text}\n".encode()
        return ctx.stay(document(receipt, filename="r.txt", mime_type="text/plain"))


@pytest.fixture(autouse=True)
def _no_charges() -> None:
    CHARGES.clear()


def test_a_step_with_a_side_effect_and_a_file_runs_once_per_message() -> None:
    e = Engine(Pay(), MemoryStore(), media=MemoryMedia(), outbox=True)
    e.handle("u1", "first", message_id="m1")
    e.handle("u1", "second", message_id="m2")  # decided on the cached record, then checked
    assert CHARGES == ["first", "second"]

    async def run() -> None:
        a = AsyncEngine(Pay(), AsyncMemoryStore(), media=MemoryMedia(), outbox=True)
        await a.handle("u1", "third", message_id="m1")
        await a.handle("u1", "fourth", message_id="m2")

    asyncio.run(run())
    assert CHARGES == ["first", "second", "third", "fourth"]


class FailsOnce(MemoryMedia):
    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def upload(self, media: OutboundMedia) -> str:
        if not self.failed:
            self.failed = True
            raise ConnectionError("the channel is down")
        return await super().upload(media)


def test_a_failed_upload_after_a_side_effect_is_not_a_redelivery() -> None:
    e = Engine(Pay(), MemoryStore(), media=FailsOnce(), outbox=True)
    with pytest.raises(MediaError) as failed:
        e.handle("u1", "pay", message_id="m1")
    assert failed.value.reason == "unavailable" and not failed.value.transient  # 200, not 503
    assert failed.value.notice is not None and "went wrong" in failed.value.notice.body
    assert CHARGES == ["pay"]


class Down:
    """A media channel in an outage."""

    async def download(self, media: InboundMedia) -> bytes:
        raise MediaError("unavailable", "GraphUnavailable")

    async def upload(self, media: OutboundMedia) -> str:
        raise MediaError("unavailable")


class Scan(Flow):
    name = "scan"
    takes_first_message = True
    stages = (Stage("open", ("name", "photo")),)
    transitions = ()

    @step("open", "name")
    def name_step(self, ctx: Context) -> Outcome:
        return ctx.stay("Send a photo.", step="photo", set={"name": ctx.text})

    @step("open", "photo", accepts={"image"})
    def photo(self, ctx: Context) -> Outcome:
        return ctx.stay(f"got {len(ctx.download())} bytes")


def test_a_media_outage_does_not_reset_the_conversation() -> None:
    e = Engine(Scan(), MemoryStore(), media=Down(), poison_after=3)
    e.handle("u1", "Ann", message_id="m1")
    for n in range(2, 7):  # more failures than poison_after: still not the flow's bug
        with pytest.raises(StepFailed):
            e.handle("u1", "", message_id=f"m{n}", attachment=InboundMedia("image", f"p{n}"))
    kept = e.peek("u1")
    assert kept is not None and kept.step == "photo" and kept.data["name"] == "Ann"


def test_a_sync_engine_called_from_async_code_still_uploads() -> None:
    async def run() -> list[str]:
        e = Engine(Receipts(), MemoryStore(), media=MemoryMedia(), outbox=True)
        return e.handle("u1", "hi", message_id="m1").texts

    assert asyncio.run(run()) == ["[document: receipt.txt, 15 B]", "noted hi"]


class Refusing(MemoryMedia):
    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def upload(self, media: OutboundMedia) -> str:
        self.attempts += 1
        raise MediaError("mime", "image/gif is not taken")


class Remind(Flow):
    name = "remind"
    takes_first_message = True
    stages = (Stage("open", ("wait",)),)
    transitions = ()

    @step("open", "wait")
    def wait(self, ctx: Context) -> Outcome:
        return ctx.stay("ok")

    @timeout("open", "wait", after=60)
    def nudge(self, ctx: Context) -> Outcome:
        return ctx.stay(image(b"GIF89a" + bytes(10), mime_type="image/gif"))


def test_a_timer_whose_file_is_refused_is_dropped_not_retried_forever() -> None:
    clock, media = FakeClock(), Refusing()
    e = Engine(Remind(), MemoryStore(clock=clock), media=media, outbox=True, clock=clock)
    e.handle("u1", "hi", message_id="m1")
    for _ in range(5):
        clock.advance(61)
        e.fire_due()
    assert media.attempts == 1 and e.stats["timers_failed"] == 1


class Resolving:
    """Like httpx opening a connection: resolves a host with the loop's getaddrinfo, which
    runs in the loop's default executor."""

    async def download(self, media: InboundMedia) -> bytes:
        await asyncio.get_running_loop().getaddrinfo("localhost", 443)
        return b"bytes"

    async def upload(self, media: OutboundMedia) -> str:
        return "id"


class Photo(Flow):
    name = "photo"
    takes_first_message = True
    stages = (Stage("open", ("photo",)),)
    transitions = ()

    @step("open", "photo", accepts={"image"})
    def photo(self, ctx: Context) -> Outcome:  # a plain def: in a handler thread
        return ctx.stay(f"got {len(ctx.download())} bytes")


def test_handlers_waiting_on_downloads_never_hold_the_loops_own_threads() -> None:
    async def run() -> list[list[str]]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
        e = AsyncEngine(Photo(), AsyncMemoryStore(), media=Resolving())
        photos = [InboundMedia("image", f"m{n}") for n in range(4)]
        handled = asyncio.gather(
            *(e.handle(f"u{n}", "", message_id=f"w{n}", attachment=p) for n, p in enumerate(photos))
        )
        started = time.monotonic()
        results = await asyncio.wait_for(handled, 10)
        assert time.monotonic() - started < 5
        return [r.texts for r in results]

    assert asyncio.run(run()) == [["got 5 bytes"]] * 4
