"""Attachments in the engine: a step declares the kinds it accepts and sees what arrived
(``ctx.media``, ``ctx.location``, ``ctx.reaction``, ``ctx.contacts``); another kind gets the
step's prompt again, a text-only step answers the flow's ``unsupported_reply`` (a reaction:
nothing); only ids and metadata are stored; the bytes are fetched on demand through the
engine's media channel, from a ``def`` handler (its thread) or an ``async def`` one; a reply
made from bytes is uploaded before its save and the outbox keeps the media id."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from fsm import (
    AsyncEngine,
    Contact,
    Contacts,
    Context,
    Engine,
    Flow,
    InboundMedia,
    Location,
    MediaError,
    Outcome,
    Reaction,
    Stage,
    document,
    on_enter,
    step,
)
from fsm.attachments import media_from
from fsm.errors import InvalidFlowDefinition, StepFailed
from fsm.media_replies import OutboundMedia
from tests.fsm.sample_flows import Receipts

PHOTO = InboundMedia("image", "media-1", "image/jpeg", caption="my prescription")
FILE = InboundMedia("document", "media-2", "application/pdf", filename="rx.pdf")
HERE = Location(-17.8292, 31.0522, "Clinic", "Harare")
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(64)


class Refill(Flow):
    """Name (text only), then a photo of the prescription (or *skip*), then where to deliver
    (a location), then contacts to notify; *statement* sends a document made from bytes."""

    name = "refill"
    takes_first_message = True
    stages = (Stage("refill", ("name", "photo", "where", "who", "done")),)
    transitions = ()

    @step("refill", "name")
    def name_step(self, ctx: Context) -> Outcome:
        if ctx.text == "statement":
            return ctx.stay(
                document(b"date,amount\n1,2\n", filename="s.csv", mime_type="text/plain")
            )
        return ctx.stay(f"Hello {ctx.text}", step="photo")

    @on_enter("refill", "photo")
    def photo_prompt(self, ctx: Context) -> list[str]:
        return ["Send a photo of your prescription, or *skip*."]

    @step("refill", "photo", accepts={"image"})
    def photo(self, ctx: Context) -> Outcome:
        if ctx.media is None:
            return ctx.stay("Skipped.", step="where")
        return ctx.stay(f"Got your {ctx.kind}: {ctx.text}", step="where", set={"rx": ctx.media})

    @step("refill", "where", accepts={"location"})
    def where(self, ctx: Context) -> Outcome:
        assert ctx.location is not None
        place = ctx.location
        return ctx.stay(f"Delivering to {place.name}", step="who", set={"lat": place.latitude})

    @step("refill", "who", accepts={"contacts", "reaction"})
    def who(self, ctx: Context) -> Outcome:
        if ctx.reaction is not None:
            return ctx.stay(f"Thanks for the {ctx.reaction.emoji}")
        names = [c.name for c in ctx.contacts]
        return ctx.stay(f"We will tell {', '.join(names)}", step="done")

    @step("refill", "done")
    def done(self, ctx: Context) -> Outcome:
        return ctx.stay("Done.")


def engine(**options: Any) -> Engine:
    return Engine(Refill(), MemoryStore(), **options)


def walk(e: Engine, user: str = "u1") -> None:
    e.handle(user, "Ann", message_id="m1")


def test_a_step_sees_the_file_it_accepts_and_keeps_ids_not_bytes() -> None:
    e = engine()
    walk(e)
    done = e.handle("u1", PHOTO.caption, message_id="m2", attachment=PHOTO)
    assert done.texts[0] == "Got your image: my prescription"
    kept = done.snapshot.data["rx"]
    assert media_from(kept) == PHOTO  # stored as data: ids and metadata, read back
    assert done.snapshot.step == "where"


def test_another_kind_gets_the_steps_prompt_again_and_changes_nothing() -> None:
    e = engine()
    walk(e)
    again = e.handle("u1", "", message_id="m2", attachment=FILE)
    assert again.texts == ["Send a photo of your prescription, or *skip*."]
    assert again.snapshot.step == "photo" and "rx" not in again.snapshot.data
    assert e.stats["attachments_refused"] == 1


def test_a_text_only_step_answers_the_unsupported_reply_and_a_reaction_nothing() -> None:
    e = engine()
    told = e.handle("u1", "", message_id="m1", attachment=PHOTO)
    assert told.texts == ["Sorry, I can only read text and button answers."]
    assert told.snapshot.step == "name"
    silent = e.handle("u1", "", message_id="m2", attachment=Reaction("wamid.1", "👍"))
    assert silent.texts == [] and silent.snapshot.step == "name"


def test_text_still_works_at_a_step_that_accepts_files() -> None:
    e = engine()
    walk(e)
    assert e.handle("u1", "skip", message_id="m2").texts == ["Skipped."]


def test_location_contacts_and_reactions_reach_the_steps_that_accept_them() -> None:
    e = engine()
    walk(e)
    e.handle("u1", "skip", message_id="m2")
    placed = e.handle("u1", "", message_id="m3", attachment=HERE)
    assert placed.texts == ["Delivering to Clinic"] and placed.snapshot.data["lat"] == -17.8292
    reacted = e.handle("u1", "", message_id="m4", attachment=Reaction("wamid.9", "🙏"))
    assert reacted.texts == ["Thanks for the 🙏"]
    cards = Contacts((Contact("Bob", ("263770000002",)), Contact("Cy")))
    assert e.handle("u1", "", message_id="m5", attachment=cards).texts == ["We will tell Bob, Cy"]


def test_what_a_user_sent_is_in_no_repr() -> None:
    seen: list[str] = []

    class Peek(Refill):
        name = "peek"

        @step("refill", "photo", accepts={"image"})
        def photo(self, ctx: Context) -> Outcome:
            seen.append(repr(ctx))
            return ctx.stay("ok")

    e = Engine(Peek(), MemoryStore())
    e.handle("u1", "Ann", message_id="m1")
    e.handle("u1", PHOTO.caption, message_id="m2", attachment=PHOTO)
    assert "prescription" not in seen[0].split("text=")[0] + seen[0].split("attachment=")[1]
    assert repr(HERE) == "Location(<redacted>)" and "Bob" not in repr(Contact("Bob"))


@pytest.mark.parametrize(
    ("accepts", "message"),
    [({"photo"}, "accepts photo: not a kind"), ("image", "a set of kinds")],
)
def test_accepts_names_known_kinds(accepts: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        step("refill", "photo", accepts=accepts)


def test_an_empty_unsupported_reply_is_refused_when_the_class_is_built() -> None:
    with pytest.raises(InvalidFlowDefinition, match="unsupported_reply"):

        class Mute(Refill):
            name = "mute"
            unsupported_reply = " "


def test_a_non_attachment_is_refused() -> None:
    with pytest.raises(TypeError, match="an attachment"):
        engine().handle("u1", "", attachment={"kind": "image"})  # type: ignore[arg-type]


# -- the media channel ---------------------------------------------------------------------
class Channel:
    """A media channel holding files by id in memory, counting uploads."""

    def __init__(self) -> None:
        self.files = {"media-1": b"\xff\xd8\xff jpeg bytes"}
        self.uploads: list[OutboundMedia] = []

    async def download(self, media: InboundMedia) -> bytes:
        if media.id not in self.files:
            raise MediaError("expired")
        return self.files[media.id]

    async def upload(self, media: OutboundMedia) -> str:
        self.uploads.append(media)
        return f"up-{len(self.uploads)}"


class Reader(Flow):
    """A photo step whose ``def`` handler reads the bytes (in a thread on AsyncEngine)."""

    name = "reader"
    takes_first_message = True
    stages = (Stage("s", ("photo",)),)
    transitions = ()

    @step("s", "photo", accepts={"image"})
    def photo(self, ctx: Context) -> Outcome:
        data = ctx.download()
        return ctx.stay(f"{len(data)} bytes, sha {hashlib.sha256(data).hexdigest()[:8]}")


class AsyncReader(Flow):
    """An ``async def`` step awaits the bytes; a ``def`` one marked non-blocking runs on the
    loop, where a blocking download would deadlock: it is refused."""

    name = "async_reader"
    takes_first_message = True
    stages = (Stage("s", ("photo", "inline")),)
    transitions = ()

    @step("s", "photo", accepts={"image"})
    async def photo(self, ctx: Context) -> Outcome:
        return ctx.stay(f"{len(await ctx.adownload())} bytes", step="inline")

    @step("s", "inline", accepts={"image"}, blocking=False)
    def inline(self, ctx: Context) -> Outcome:
        return ctx.stay(f"{len(ctx.download())} bytes")


def test_a_def_handler_downloads_in_its_thread_on_both_engines() -> None:
    channel = Channel()
    want = f"14 bytes, sha {hashlib.sha256(channel.files['media-1']).hexdigest()[:8]}"
    sync = Engine(Reader(), MemoryStore(), media=channel)
    assert sync.handle("u1", "", message_id="a", attachment=PHOTO).texts == [want]

    async def run() -> list[str]:
        e = AsyncEngine(Reader(), AsyncMemoryStore(), media=channel)
        return (await e.handle("u1", "", message_id="a", attachment=PHOTO)).texts

    assert asyncio.run(run()) == [want]


def test_an_async_handler_awaits_the_download_and_the_loop_is_never_blocked() -> None:
    async def run() -> None:
        e = AsyncEngine(AsyncReader(), AsyncMemoryStore(), media=Channel())
        done = await e.handle("u1", "", message_id="a", attachment=PHOTO)
        assert done.texts == ["14 bytes"]
        with pytest.raises(StepFailed) as failed:
            await e.handle("u1", "", message_id="b", attachment=PHOTO)
        assert "await ctx.adownload()" in str(failed.value.__cause__)

    asyncio.run(run())


def test_a_download_the_step_does_not_catch_fails_the_step_with_the_reason() -> None:
    gone = InboundMedia("image", "media-404", "image/jpeg")
    with pytest.raises(StepFailed) as failed:
        Engine(Reader(), MemoryStore(), media=Channel()).handle(
            "u1", "", message_id="a", attachment=gone
        )
    cause = failed.value.__cause__
    assert isinstance(cause, MediaError) and cause.reason == "expired"
    assert failed.value.notice is not None  # the user is told (the flow's failure_reply)
    with pytest.raises(StepFailed) as failed:
        Engine(Reader(), MemoryStore()).handle("u1", "", message_id="a", attachment=PHOTO)
    cause = failed.value.__cause__
    assert isinstance(cause, MediaError) and cause.reason == "no_channel"


class Unreachable(Channel):
    async def upload(self, media: OutboundMedia) -> str:
        raise ConnectionError("the channel is down")


def test_a_file_that_cannot_be_uploaded_saves_nothing_and_asks_for_a_redelivery() -> None:
    store = MemoryStore()
    e = Engine(Refill(), store, media=Unreachable(), outbox=True)
    with pytest.raises(MediaError) as failed:
        e.handle("u1", "statement", message_id="m1")
    assert failed.value.reason == "unavailable" and failed.value.transient
    assert failed.value.notice is not None and "longer" in failed.value.notice.body
    assert e.peek("u1") is None  # nothing saved: the re-delivery runs the step again


def test_a_reply_from_bytes_is_uploaded_before_its_save_and_kept_by_id() -> None:
    channel = Channel()
    e = engine(media=channel, outbox=True)
    done = e.handle("u1", "statement", message_id="m1")
    assert [u.filename for u in channel.uploads] == ["s.csv"]
    [sent] = done.outbox
    assert sent.reply.media is not None
    assert (sent.reply.media.id, sent.reply.media.data) == ("up-1", b"")
    assert sent.reply.media.size == 16 and sent.reply.render() == "[document: s.csv, 16 B]"
    stored = e.peek("u1")
    assert stored is not None and stored.outbox[0].reply.media.id == "up-1"  # type: ignore[union-attr]
    assert e.stats["media_uploads"] == 1


def test_without_a_channel_the_bytes_stay_in_the_reply() -> None:
    done = engine().handle("u1", "statement", message_id="m1")
    [reply] = done.replies
    assert reply.media is not None and reply.media.data == b"date,amount\n1,2\n"


def test_a_redelivery_judged_on_a_cached_record_uploads_nothing() -> None:
    """Worker B remembers the conversation as it was; worker A applies a message with a file;
    the same message re-delivered to B is a duplicate, and B must not upload its file again
    (it would decide on its cached record, which does not say the message was applied)."""
    store, channel = MemoryStore(), Channel()
    a = Engine(Receipts(), store, media=channel, outbox=True)
    b = Engine(Receipts(), store, media=channel, outbox=True)
    b.handle("u1", "first", message_id="m0")  # B's cached record: version 1
    a.handle("u1", "second", message_id="m1")  # A applies m1: version 2, one upload
    again = b.handle("u1", "second", message_id="m1")  # re-delivered to B
    assert again.duplicate
    assert [u.data for u in channel.uploads] == [b"receipt for first\n", b"receipt for second\n"]
    third = b.handle("u1", "third", message_id="m2")
    assert third.texts == ["[document: receipt.txt, 18 B]", "noted third"]
