"""Messages that are not text, parsed from webhook bodies in Meta's shapes: media, places,
reactions and contact cards become the message's attachment; broken ones stay unreadable
(for the bot's hook) without failing the rest of the body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.whatsapp.updates import Incoming, parse_attachment, parse_update
from fsm.attachments import Contact, Contacts, InboundMedia, Location, Reaction, attachment_kind

from . import payloads as p
from .fake_graph import PHONE_NUMBER_ID

ALICE = "263770000001"


def parsed(*messages: dict[str, Any]) -> list[Incoming]:
    update = parse_update(p.body(list(messages)), phone_number_id=PHONE_NUMBER_ID)
    assert update.malformed == 0
    return update.messages


def one(message: dict[str, Any]) -> Incoming:
    [incoming] = parsed(message)
    return incoming


# -- media -------------------------------------------------------------------------------------
def test_an_image_with_a_caption_is_read_with_its_caption_as_the_text() -> None:
    message = one(p.image(ALICE, media_id="88001", caption="My receipt"))
    assert message.attachment == InboundMedia(
        "image", "88001", mime_type="image/jpeg", sha256=p.SHA256, caption="My receipt"
    )
    assert (message.kind, message.text, message.pressed) == ("image", "My receipt", None)
    assert message.readable and attachment_kind(message.attachment) == "image"


def test_an_image_without_a_caption_has_no_text() -> None:
    message = one(p.image(ALICE))
    assert isinstance(message.attachment, InboundMedia)
    assert (message.attachment.caption, message.text, message.readable) == ("", "", True)


def test_a_video_and_a_document_with_its_file_name() -> None:
    clip, statement = parsed(
        p.video(ALICE, media_id="v-1", caption="The damage"),
        p.document(ALICE, media_id="d-1", filename="March.pdf", caption="Statement"),
    )
    assert clip.attachment == InboundMedia(
        "video", "v-1", mime_type="video/mp4", sha256=p.SHA256, caption="The damage"
    )
    assert statement.attachment == InboundMedia(
        "document",
        "d-1",
        mime_type="application/pdf",
        sha256=p.SHA256,
        caption="Statement",
        filename="March.pdf",
    )
    assert (clip.text, statement.text) == ("The damage", "Statement")


def test_a_voice_note_and_an_audio_file() -> None:
    note, song = parsed(p.audio(ALICE, media_id="a-1", voice=True), p.audio(ALICE, media_id="a-2"))
    assert note.attachment == InboundMedia(
        "audio", "a-1", mime_type="audio/ogg; codecs=opus", sha256=p.SHA256, voice=True
    )
    assert isinstance(song.attachment, InboundMedia) and song.attachment.voice is False
    assert note.text == song.text == ""


def test_a_sticker_animated_or_not() -> None:
    still, moving = parsed(p.sticker(ALICE, media_id="s-1"), p.sticker(ALICE, animated=True))
    assert still.attachment == InboundMedia(
        "sticker", "s-1", mime_type="image/webp", sha256=p.SHA256
    )
    assert isinstance(moving.attachment, InboundMedia) and moving.attachment.kind == "sticker"
    assert moving.raw["sticker"]["animated"] is True  # kept in raw, not in the attachment


def test_a_filename_or_voice_flag_on_another_kind_is_not_taken() -> None:
    image = p.image(ALICE)
    image["image"] |= {"filename": "x.jpg", "voice": True}
    attachment = one(image).attachment
    assert isinstance(attachment, InboundMedia)
    assert (attachment.filename, attachment.voice) == ("", False)


# -- places, reactions, contact cards ---------------------------------------------------------
def test_a_named_place_and_a_dropped_pin() -> None:
    named, pin = parsed(
        p.location(
            ALICE,
            -17.8292,
            31.0522,
            name="Credex office",
            address="1 Samora Machel Ave, Harare",
            url="https://credex.example/office",
        ),
        p.location(ALICE, 51, -0.1),  # integers are numbers too
    )
    assert named.attachment == Location(
        -17.8292, 31.0522, "Credex office", "1 Samora Machel Ave, Harare"
    )
    assert pin.attachment == Location(51.0, -0.1)
    assert (named.kind, named.text, named.readable) == ("location", "", True)


def test_the_extremes_of_the_globe_are_places() -> None:
    north, antimeridian = parsed(p.location(ALICE, 90, 180), p.location(ALICE, -90.0, -180.0))
    assert north.attachment == Location(90.0, 180.0)
    assert antimeridian.attachment == Location(-90.0, -180.0)


def test_a_reaction_and_its_removal() -> None:
    added, removed, emptied = parsed(
        p.reaction(ALICE, "wamid.ours.1", "\N{THUMBS UP SIGN}"),
        p.reaction(ALICE, "wamid.ours.1", None),  # Meta sends no emoji when it is removed
        p.reaction(ALICE, "wamid.ours.2", ""),
    )
    assert added.attachment == Reaction("wamid.ours.1", "\N{THUMBS UP SIGN}")
    assert removed.attachment == Reaction("wamid.ours.1", "")
    assert emptied.attachment == Reaction("wamid.ours.2", "")
    assert [m.kind for m in (added, removed, emptied)] == ["reaction"] * 3
    assert all(m.readable and m.text == "" for m in (added, removed, emptied))


def test_several_contact_cards() -> None:
    message = one(
        p.contacts(
            ALICE,
            p.contact_card("Tendai Moyo", "+263 77 123 4567", "+263 24 270 0000"),
            p.contact_card("Dr. Rudo Chikwanha", "+263 71 555 0101", wa_ids=False),
            p.contact_card("No Phones Ltd"),
        )
    )
    assert message.attachment == Contacts(
        (
            Contact("Tendai Moyo", ("+263 77 123 4567", "+263 24 270 0000")),
            Contact("Dr. Rudo Chikwanha", ("+263 71 555 0101",)),
            Contact("No Phones Ltd"),
        )
    )
    assert (message.kind, message.text, message.readable) == ("contacts", "", True)


def test_a_card_in_meta_s_full_shape() -> None:
    """Every field Meta may send on a card; only the name and the numbers are kept."""
    card = {
        "addresses": [{"city": "Harare", "country": "Zimbabwe", "type": "WORK"}],
        "birthday": "1990-04-01",
        "emails": [{"email": "tendai@example.com", "type": "WORK"}],
        "name": {
            "formatted_name": "Tendai Moyo",
            "first_name": "Tendai",
            "last_name": "Moyo",
            "prefix": "Mr",
        },
        "org": {"company": "Credex", "title": "Agent"},
        "phones": [
            {"phone": "+263 77 123 4567", "wa_id": "263771234567", "type": "CELL"},
            {"wa_id": "263779999999"},  # only the WhatsApp id: that is the number
            {"type": "HOME"},  # no number at all: not a phone
            "+263 00",  # not an object: not a phone
        ],
        "urls": [{"url": "https://example.com", "type": "WORK"}],
    }
    attachment = one(p.contacts(ALICE, card)).attachment
    assert attachment == Contacts((Contact("Tendai Moyo", ("+263 77 123 4567", "263779999999")),))


def test_a_card_without_a_formatted_name_is_named_by_its_first_and_last_names() -> None:
    card = {"name": {"first_name": "Rudo", "last_name": "Chikwanha"}, "phones": []}
    assert one(p.contacts(ALICE, card)).attachment == Contacts((Contact("Rudo Chikwanha"),))


# -- broken ones: unreadable, the rest of the body read ----------------------------------------
def _without(message: dict[str, Any], field: str) -> dict[str, Any]:
    kind = message["type"]
    message[kind] = {k: v for k, v in message[kind].items() if k != field}
    return message


BROKEN: dict[str, dict[str, Any]] = {
    "image without id": _without(p.image(ALICE), "id"),
    "image with a blank id": p.image(ALICE, media_id=""),
    "image id a number": p.image(ALICE) | {"image": {"id": 1234, "mime_type": "image/jpeg"}},
    "image not an object": p.image(ALICE) | {"image": "1234"},
    "image missing": {k: v for k, v in p.image(ALICE).items() if k != "image"},
    "document without id": _without(p.document(ALICE), "id"),
    "audio without id": _without(p.audio(ALICE, voice=True), "id"),
    "video without id": _without(p.video(ALICE), "id"),
    "sticker without id": _without(p.sticker(ALICE), "id"),
    "latitude a string": p.location(ALICE, "-17.8292", 31.0522),
    "latitude missing": _without(p.location(ALICE), "latitude"),
    "longitude null": p.location(ALICE, -17.8, None),
    "latitude a bool": p.location(ALICE, True, 31.0),
    "latitude out of range": p.location(ALICE, 90.5, 31.0),
    "longitude out of range": p.location(ALICE, -17.8, -180.01),
    "latitude huge": p.location(ALICE, 1e300, 31.0),  # (1e400: the body is refused, 400)
    "location a list": p.location(ALICE) | {"location": [-17.8, 31.0]},
    "reaction without message id": p.reaction(ALICE, ""),
    "reaction emoji a number": p.reaction(ALICE, "wamid.ours.1")
    | {"reaction": {"message_id": "wamid.ours.1", "emoji": 128077}},
    "no contact cards": p.contacts(ALICE),
    "contacts an object": p.contacts(ALICE) | {"contacts": {"name": {"formatted_name": "X"}}},
    "a card without a name": p.contacts(
        ALICE, p.contact_card("Tendai Moyo", "+263 77"), {"phones": [{"phone": "+263 71"}]}
    ),
    "a card with a blank name": p.contacts(ALICE, {"name": {"formatted_name": " "}}),
    "a card not an object": p.contacts(ALICE, "Tendai"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("message", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_attachment_is_kept_unreadable_and_the_rest_is_read(
    message: dict[str, Any],
) -> None:
    kind = message["type"]
    raw = p.body([message, p.text(ALICE, "still here")])
    update = parse_update(raw, phone_number_id=PHONE_NUMBER_ID)
    broken, fine = update.messages
    assert update.malformed == 0  # it has an id and a sender: kept for the hook to answer
    assert (broken.kind, broken.attachment, broken.text) == (f"{kind}:unreadable", None, "")
    assert not broken.readable
    assert (fine.kind, fine.text, fine.readable) == ("text", "still here", True)


def test_a_kind_no_flow_reads_stays_as_it_was() -> None:
    order = p._message(ALICE, "order", {"order": {"catalog_id": "1", "product_items": []}})
    unknown = {"from": ALICE, "id": p.wamid(), "timestamp": "1", "type": "unsupported"}
    read_order, read_unknown = parsed(order, unknown)
    assert (read_order.kind, read_order.attachment, read_order.readable) == ("order", None, False)
    assert (read_unknown.kind, read_unknown.readable) == ("unsupported", False)


def test_every_kind_in_one_body_in_order() -> None:
    messages = [
        p.text(ALICE, "hi"),
        p.image(ALICE, caption="a"),
        p.document(ALICE),
        p.audio(ALICE, voice=True),
        p.video(ALICE),
        p.sticker(ALICE),
        p.location(ALICE),
        p.reaction(ALICE, "wamid.ours.9"),
        p.contacts(ALICE, p.contact_card("Tendai Moyo", "+263 77")),
    ]
    got = [attachment_kind(m.attachment) for m in parsed(*messages)]
    assert got == [
        "text",
        "image",
        "document",
        "audio",
        "video",
        "sticker",
        "location",
        "reaction",
        "contacts",
    ]


def test_parse_attachment_on_its_own() -> None:
    assert parse_attachment("location", {"latitude": 1, "longitude": 2}) == Location(1.0, 2.0)
    assert parse_attachment("image", {"id": "9"}) == InboundMedia("image", "9")
    assert parse_attachment("text", {"body": "hi"}) is None
    assert parse_attachment("image", None) is None


def test_no_content_in_a_repr() -> None:
    """A caption, a place, a contact card and the words of a text are the user's."""
    messages = parsed(
        p.image(ALICE, caption="SECRET-CAPTION"),
        p.document(ALICE, filename="SECRET-FILE.pdf"),
        p.location(ALICE, -17.123456, 31.654321, name="SECRET-PLACE", address="SECRET-ROAD"),
        p.contacts(ALICE, p.contact_card("SECRET Name", "+263 77 999 1234")),
        p.text(ALICE, "SECRET-TEXT"),
    )
    shown = " ".join(repr(m) for m in messages)
    for secret in ("SECRET", "17.12", "31.65", "999 1234"):
        assert secret not in shown
    assert "image" in shown and "location" in shown  # the kinds are shown


def test_parsed_bodies_are_json_meta_could_send() -> None:
    """The builders' bodies are plain JSON (what the tests parse is what Meta sends)."""
    raw = p.body([p.location(ALICE, name="x"), p.contacts(ALICE, p.contact_card("A B", "+1"))])
    value = json.loads(raw)["entry"][0]["changes"][0]["value"]
    first, second = value["messages"]
    assert first["location"] == {"latitude": -17.8292, "longitude": 31.0522, "name": "x"}
    assert second["contacts"][0]["phones"] == [{"phone": "+1", "type": "CELL", "wa_id": "1"}]
