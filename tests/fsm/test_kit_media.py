"""The testing kit's media: ``chat.send(...)`` and a transcript's ``! send`` deliver files,
places, reactions and contact cards as a user would, through a MemoryMedia that checks every
download as a real channel does."""

from __future__ import annotations

import asyncio

import pytest

from adapters import MemoryStore
from fsm import Engine, InboundMedia, MediaError
from fsm.memory_media import MemoryMedia, kind_of
from fsm.testing import Conversation
from fsm.transcript import TranscriptError

from .test_attachments import PNG_BYTES, Refill


def chat() -> Conversation:
    return Conversation(Engine(Refill(), MemoryStore()), "263770000001")


def test_chat_send_delivers_a_file_a_step_can_read() -> None:
    c = chat()
    c.say("Ann")
    turn = c.send(PNG_BYTES, "image/png", caption="the prescription")
    turn.expect("Got your image: the prescription", step="where")
    assert isinstance(c.media, MemoryMedia) and len(c.media.files) == 1


def test_a_transcript_sends_every_kind() -> None:
    run = chat().run(
        """
> Ann
! send document rx.pdf | scan
< Send a photo of your prescription
= refill.photo
! send image | front page
< Got your image: front page
! send location -17.8292,31.0522 Clinic
< Delivering to Clinic
! send reaction 👍
< Thanks for the 👍
! send contact Bob Dube 263770000002
< We will tell Bob Dube
= refill.done
"""
    )
    assert run.ok, run.failures


@pytest.mark.parametrize(
    "line",
    ["! send", "! send gif", "! send image x.png", "! send location north", "! send contact Bob"],
)
def test_a_bad_send_line_says_how_to_write_it(line: str) -> None:
    with pytest.raises(TranscriptError, match="use: ! send"):
        chat().run(line)


def test_memory_media_checks_downloads_as_a_channel_does() -> None:
    media = MemoryMedia(max_bytes=100)
    small = media.add(b"%PDF-1.4", "application/pdf", filename="a.pdf")
    big = media.add(bytes(200), "image/png")
    lying = InboundMedia("image", small.id, "application/pdf", sha256="00" * 32)
    wrong_type = InboundMedia("document", small.id, "image/png")

    async def reasons() -> list[str]:
        found = []
        for wanted in (
            big,
            lying,
            InboundMedia("image", "nope"),
            wrong_type,
        ):
            try:
                await media.download(wanted)
            except MediaError as exc:
                found.append(exc.reason)
        return found

    assert asyncio.run(reasons()) == ["too_large", "sha256", "expired", "mime"]
    assert asyncio.run(media.download(small)) == b"%PDF-1.4"
    assert [kind_of(m) for m in ("image/webp", "image/png", "audio/ogg", "text/csv")] == [
        "sticker",
        "image",
        "audio",
        "document",
    ]
