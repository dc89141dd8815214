"""Media replies: made from a link, bytes, a media id or a file the user sent; rendered as the
terminal shows them; checked against WhatsApp's limits (type, size, caption); stored in an
outbox without their bytes once uploaded, and read back unchanged."""

from __future__ import annotations

import msgspec
import pytest

from fsm import (
    InboundMedia,
    Reply,
    audio,
    document,
    image,
    location,
    location_request,
    reaction,
    sticker,
    video,
)
from fsm.media_replies import MB, OutboundMedia, human_size
from fsm.reply import check_whatsapp

PNG = b"\x89PNG\r\n\x1a\n" + bytes(100)


def test_bytes_get_their_type_size_and_digest() -> None:
    made = image(PNG, caption="receipt")
    assert made.media is not None
    assert (made.media.mime_type, made.media.size, len(made.media.sha256)) == ("image/png", 108, 64)
    assert document(b"%PDF-1.4", filename="a.pdf").media.mime_type == "application/pdf"  # type: ignore[union-attr]
    assert document(b"x", filename="notes.txt").media.mime_type == "text/plain"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: image("ftp://x/y.png"), "http"),
        (lambda: image(), "one of"),
        (lambda: image(PNG, media_id="m1"), "one of"),
        (lambda: image(b""), "some bytes"),
        (lambda: image(42), "link \\(str\\) or bytes"),  # type: ignore[arg-type]
        (lambda: location_request(" "), "needs a body"),
        (lambda: reaction("", "👍"), "the id of the message"),
        (lambda: location(91, 0), "latitude"),
    ],
)
def test_bad_media_replies_are_refused_when_made(make: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make()  # type: ignore[operator]


def test_each_kind_renders_as_a_line_the_terminal_shows() -> None:
    assert image(PNG).render() == "[image: 108 B]"
    assert image("https://example.com/a.png").render() == "[image: by link]"
    assert audio(media_id="m7").render() == "[audio]"
    assert video(b"\x00" * (2 * MB), caption="how to").render() == "[video: 2.0 MB]\nhow to"
    assert location(1.5, 2.25).render() == "[location: 1.50000, 2.25000]"
    assert reaction("wamid.1", "").render() == "[reaction removed]"
    assert human_size(12 * 1024) == "12 KB"


def test_whatsapps_limits_are_checked() -> None:
    assert check_whatsapp(image(PNG, caption="ok")) == []
    with pytest.raises(ValueError, match="no image of type image/gif"):
        check_whatsapp(image(b"GIF89a" + bytes(10), mime_type="image/gif"))
    with pytest.raises(ValueError, match=r"the image is 6\.0 MB"):
        check_whatsapp(image(b"\xff\xd8\xff" + bytes(6 * MB)))
    with pytest.raises(ValueError, match="cannot carry a caption"):
        check_whatsapp(Reply("hello", "audio", media=OutboundMedia("audio", id="m1")))
    with pytest.raises(ValueError, match="caption is 1025 characters"):
        check_whatsapp(image(PNG, caption="x" * 1025))
    with pytest.raises(ValueError, match="the sticker is"):
        check_whatsapp(sticker(b"RIFF\x00\x00\x00\x00WEBP" + bytes(600 * 1024)))
    assert check_whatsapp(location(0, 0)) == [] and check_whatsapp(reaction("w", "👍")) == []


def test_a_forwarded_file_keeps_its_origin_until_uploaded() -> None:
    sent = InboundMedia("image", "wa-9", "image/jpeg", "ab" * 32, caption="me")
    made = image(sent, caption="Your photo")
    assert made.media is not None and made.media.forward == "wa-9"
    assert made.media.forwarded().id == "wa-9" and "wa-9" not in repr(made.media)
    uploaded = made.media.fetched(PNG).uploaded("up-1")
    assert (uploaded.id, uploaded.forward, uploaded.data, uploaded.size) == ("up-1", "", b"", 108)


def test_an_uploaded_reply_round_trips_through_msgpack_without_bytes() -> None:
    reply = document(b"a,b\n", filename="s.csv", mime_type="text/plain")
    assert reply.media is not None
    stored = msgspec.structs.replace(reply, media=reply.media.uploaded("up-3"))
    raw = msgspec.msgpack.encode(stored)
    assert b"a,b" not in raw
    assert msgspec.msgpack.decode(raw, type=Reply) == stored
    plain = msgspec.msgpack.encode(Reply("hi"))  # a text reply is stored as before media
    assert plain == msgspec.msgpack.encode({"body": "hi"})
