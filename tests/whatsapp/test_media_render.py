"""Media, location, location-request and reaction replies as Graph API payloads, in Meta's
send-message shapes; a reply of bytes only (not uploaded) is refused, never sent inline."""

from __future__ import annotations

import json
import logging

import pytest

from adapters.whatsapp.render import render
from fsm.attachments import Location, Reaction
from fsm.media_replies import OutboundMedia
from fsm.reply import (
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

TO = "263770000001"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


def envelope(kind: str, content: object) -> dict[str, object]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": TO,
        "type": kind,
        kind: content,
    }


# -- media ---------------------------------------------------------------------------------------
def test_an_image_by_id_with_a_caption() -> None:
    sent = render(image(media_id="1013859600285441", caption="Your receipt"), TO)
    assert sent == [envelope("image", {"id": "1013859600285441", "caption": "Your receipt"})]
    json.dumps(sent)


def test_an_image_by_link_without_a_caption() -> None:
    sent = render(image("https://cdn.example.com/receipt.png"), TO)
    assert sent == [envelope("image", {"link": "https://cdn.example.com/receipt.png"})]


def test_an_uploaded_image_is_sent_by_its_media_id() -> None:
    made = image(PNG, caption="Here")
    assert made.media is not None
    uploaded = Reply(made.body, "image", media=made.media.uploaded("555"))
    assert render(uploaded, TO) == [envelope("image", {"id": "555", "caption": "Here"})]


def test_a_document_with_its_file_name_and_caption() -> None:
    reply = document(
        "https://cdn.example.com/s/abc.pdf", filename="March statement.pdf", caption="March"
    )
    assert render(reply, TO) == [
        envelope(
            "document",
            {
                "link": "https://cdn.example.com/s/abc.pdf",
                "caption": "March",
                "filename": "March statement.pdf",
            },
        )
    ]
    by_id = render(document(media_id="77", filename="a.pdf"), TO)
    assert by_id == [envelope("document", {"id": "77", "filename": "a.pdf"})]


def test_a_document_without_a_file_name_sends_none() -> None:
    reply = Reply("", "document", media=OutboundMedia("document", id="78"))
    assert render(reply, TO) == [envelope("document", {"id": "78"})]


def test_a_video_with_and_without_a_caption() -> None:
    assert render(video(media_id="v9", caption="How to pay"), TO) == [
        envelope("video", {"id": "v9", "caption": "How to pay"})
    ]
    assert render(video("https://cdn.example.com/v.mp4"), TO) == [
        envelope("video", {"link": "https://cdn.example.com/v.mp4"})
    ]


def test_audio_and_a_sticker_carry_no_caption() -> None:
    assert render(audio(media_id="a1"), TO) == [envelope("audio", {"id": "a1"})]
    assert render(audio("https://cdn.example.com/a.mp3"), TO) == [
        envelope("audio", {"link": "https://cdn.example.com/a.mp3"})
    ]
    assert render(sticker(media_id="s1"), TO) == [envelope("sticker", {"id": "s1"})]


def test_a_caption_the_media_cannot_carry_follows_it_as_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Made by hand (the builders refuse it; check_whatsapp reports it in a flow's tests)."""
    on_audio = Reply("SECRET words", "audio", media=OutboundMedia("audio", id="a2"))
    with caplog.at_level(logging.WARNING, logger="adapters.whatsapp"):
        sent = render(on_audio, TO)
    assert sent == [
        envelope("audio", {"id": "a2"}),
        envelope("text", {"body": "SECRET words", "preview_url": False}),
    ]
    long = "x" * 1025
    first, *rest = render(image(media_id="i1", caption=long), TO)
    assert first == envelope("image", {"id": "i1"})
    assert [part["text"]["body"] for part in rest] == [long]
    assert "SECRET" not in caplog.text and "audio" in caplog.text


def test_a_caption_of_exactly_the_limit_rides_with_the_image() -> None:
    caption = "y" * 1024
    assert render(image(media_id="i2", caption=caption), TO) == [
        envelope("image", {"id": "i2", "caption": caption})
    ]


def test_a_type_whatsapp_may_refuse_is_logged_and_sent(caplog: pytest.LogCaptureFixture) -> None:
    reply = image("https://cdn.example.com/p.gif", mime_type="image/gif")
    with caplog.at_level(logging.WARNING, logger="adapters.whatsapp"):
        sent = render(reply, TO)
    assert sent == [envelope("image", {"link": "https://cdn.example.com/p.gif"})]
    assert "image/gif" in caplog.text and "cdn.example.com" not in caplog.text


def test_bytes_are_never_sent_inline() -> None:
    for reply in (
        image(PNG, caption="Not uploaded"),
        document(b"date,amount\n", filename="s.csv", mime_type="text/plain"),
        audio(b"ID3" + bytes(16), mime_type="audio/mpeg"),
        sticker(b"RIFF\x00\x00\x00\x00WEBP"),
    ):
        with pytest.raises(ValueError, match="bytes only") as refused:
            render(reply, TO)
        assert "Not uploaded" not in str(refused.value)


def test_a_media_reply_without_its_media_is_refused() -> None:
    with pytest.raises(ValueError, match="no image"):
        render(Reply("caption", "image"), TO)
    with pytest.raises(ValueError, match="no video"):
        render(Reply("", "video", media=OutboundMedia("image", id="1")), TO)
    with pytest.raises(ValueError, match="bytes only"):
        render(Reply("", "image", media=OutboundMedia("image")), TO)  # no id, link or bytes


# -- places, location requests, reactions -------------------------------------------------------
def test_a_location_with_and_without_name_and_address() -> None:
    named = location(-17.8292, 31.0522, name="Credex office", address="1 Samora Machel Ave")
    assert render(named, TO) == [
        envelope(
            "location",
            {
                "latitude": -17.8292,
                "longitude": 31.0522,
                "name": "Credex office",
                "address": "1 Samora Machel Ave",
            },
        )
    ]
    assert render(location(0, 0), TO) == [envelope("location", {"latitude": 0.0, "longitude": 0.0})]
    with pytest.raises(ValueError, match="place"):
        render(Reply("", "location"), TO)


def test_a_location_request() -> None:
    sent = render(location_request("Where should we deliver?"), TO)
    assert sent == [
        envelope(
            "interactive",
            {
                "type": "location_request_message",
                "body": {"text": "Where should we deliver?"},
                "action": {"name": "send_location"},
            },
        )
    ]


def test_a_location_request_over_the_body_limit_is_sent_as_its_text() -> None:
    body = " ".join(["Where?"] * 200)  # 1,399 characters: over the interactive body's 1,024
    [sent] = render(location_request(body), TO)
    assert sent == envelope("text", {"body": body, "preview_url": False})  # no button line


def test_a_reaction_and_its_removal() -> None:
    assert render(reaction("wamid.user.1", "\N{THUMBS UP SIGN}"), TO) == [
        envelope("reaction", {"message_id": "wamid.user.1", "emoji": "\N{THUMBS UP SIGN}"})
    ]
    assert render(reaction("wamid.user.1", ""), TO) == [
        envelope("reaction", {"message_id": "wamid.user.1", "emoji": ""})
    ]
    for broken in (Reply("", "reaction"), Reply("", "reaction", reaction=Reaction(""))):
        with pytest.raises(ValueError, match="reacts to"):
            render(broken, TO)


def test_every_kind_is_plain_json() -> None:
    replies = [
        image(media_id="1", caption="c"),
        document(media_id="2", filename="f.pdf"),
        audio(media_id="3"),
        video(media_id="4"),
        sticker(media_id="5"),
        location(1.5, 2.5, name="n"),
        location_request("Where?"),
        reaction("wamid.1", "\N{HEAVY BLACK HEART}"),
        Reply("", "location", place=Location(-1.0, 1.0)),
    ]
    payloads = [payload for reply in replies for payload in render(reply, TO)]
    assert [payload["type"] for payload in payloads] == [
        "image",
        "document",
        "audio",
        "video",
        "sticker",
        "location",
        "interactive",
        "reaction",
        "location",
    ]
    assert json.loads(json.dumps(payloads)) == payloads
